"""The student's library (what the student stages crsd, baseline and eval share).

data.py      pairs with reasoning and labels per the data section, the tokenizer, eval pairs
batches.py   training batches (the baseline's without the augmented view)
model.py     the initial student (MiniLM, a HF folder or random) and its final/ meta
predict.py   standard-view predictions, their metrics and predictions.jsonl
"""
