"""The teacher's library (what the teacher stages cpt, sft, reward, dpo and annotate share).

model.py         the decoder a stage starts from (load_teacher), its shardings and final/ meta,
                 and the masked next-token loss of CPT and SFT
rows.py          checkpointable batches of fixed token rows, right padding
eval.py          prompts that fit, sampling and answer extraction, macro-F1 of parsed answers
sampling.py      prompt selection, sampled responses, their scorer values (reward and dpo)
reward_model.py  the K-head reward model: scores, heads, the final/ it is loaded from
"""
