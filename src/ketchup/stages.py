"""Pipeline stages: what each Snakemake rule runs, as plain functions of a spec and paths.

A spec is the slice of the validated config a stage needs (the Snakefile passes it as JSON), so
the same stage runs by hand: ``python -m ketchup <stage> --spec '{...}' ...``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ketchup import metrics
from ketchup.config import ConfigError
from ketchup.data import sources
from ketchup.io import read_json, read_jsonl, write_json, write_jsonl
from ketchup.runtime import compute_device, teacher_dtype


def data(*, task: str, spec: dict[str, Any], seed: int, out_dir: str) -> None:
    sources.build(task, spec, seed, out_dir)


def tokenizer(*, task: dict[str, Any], data_dir: str, prompt: str, vocab_size: int, out_dir: str,
              calculator: bool = False, sentinels: int = 0) -> None:
    """``task``: the task's definition (ketchup.tasks: its fields say what text there is)."""
    from ketchup.tokenizer import build

    build(sources.examples(task, Path(data_dir) / "train.jsonl", prompt, calculator), vocab_size, out_dir, sentinels)


def generate_texts(model, tok, arch: str, sources_: list[str], gen: dict[str, Any], max_source_length: int,
                   desc: str = "generate") -> list[str]:
    """Greedy (or beam) outputs for ``sources_``, batched by length, in the original order.

    In an N-process job every process calls it with the same sources: process r decodes batches
    r, r + N, ... of the one-process batching (the same batches, so the same texts) and every
    process returns all outputs, gathered."""
    from ketchup.batching import Decoding, decode, generate, make_batch
    from ketchup.calculator import processors
    from ketchup.runtime import process_share

    processor = processors(gen, tok)
    order = sorted(range(len(sources_)), key=lambda i: len(sources_[i]))
    outputs: list[str] = [""] * len(sources_)
    device = next(model.parameters()).device
    bs = gen["batch_size"]
    rank, world = process_share()
    batches = [order[start: start + bs] for start in range(0, len(order), bs)][rank::world]
    done: list[tuple[int, str]] = []
    for idx in tqdm(batches, desc=desc, file=sys.stderr, mininterval=2.0, disable=rank > 0):
        batch = make_batch(tok, [sources_[i] for i in idx], None, arch, max_source_length, 1).to(device)
        out = generate(model, arch, batch, tok, gen["max_new_tokens"], sample=False, num_beams=gen["num_beams"],
                       logits_processor=processor, decoding=Decoding.of(gen))
        done.extend(zip(idx, decode(tok, out)))
    if world > 1:
        from accelerate.utils import gather_object

        print(f"{desc}: process {rank} of {world} decoded {len(done)} of {len(sources_)} examples",
              file=sys.stderr, flush=True)
        done = gather_object(done)
    for i, text in done:
        outputs[i] = text
    return outputs


def dev_evaluator(task: dict[str, Any], tok, arch: str, dev: list[dict[str, str]], gen: dict[str, Any],
                  max_source_length: int, n: int):
    """A function model -> the task's primary metric (``task``: its definition) on the first ``n`` dev
    examples (greedy decoding)."""
    subset = dev[:n]
    primary, answer = task["primary_metric"], task.get("answer", "text")

    def evaluate(model) -> float:
        preds = generate_texts(model, tok, arch, [ex["source"] for ex in subset], gen, max_source_length, "dev")
        return metrics.compute([primary], preds, [ex["target"] for ex in subset], answer)[primary]

    return evaluate


def _build_or_load(spec: dict[str, Any], model_spec: dict[str, Any], tok, where: str):
    from ketchup.models import align_special_tokens, build_model

    model = build_model(spec["arch"], model_spec, tok, seed=spec["seed"], where=where)
    # A loaded checkpoint gets the tokenizer's EOS (a chat template's end of turn) and padding ids.
    return align_special_tokens(model, tok) if "name_or_path" in model_spec else model


def _save_untrained(model, tok, out_dir: str, summary: dict[str, Any]) -> None:
    from ketchup.io import atomic_path

    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        write_json(tmp / "train_summary.json", summary)


def teacher(*, spec: dict[str, Any], data_dir: str, tokenizer_dir: str, ckpt_dir: str, out_dir: str) -> None:
    """Fine-tune the teacher on the task's ground truth; keep the dev-best checkpoint."""
    from ketchup.methods import Objective
    from ketchup.training import TrainData, train

    task, arch, tdef = spec["task"], spec["arch"], task_definition(spec)
    tok = _task_tokenizer(spec, tokenizer_dir)
    calc = spec["generation"].get("calculator", False)
    train_ex = sources.examples(tdef, Path(data_dir) / "train.jsonl", spec["prompt"], calc)
    dev_ex = sources.examples(tdef, Path(data_dir) / "dev.jsonl", spec["prompt"], calc)
    model = _build_or_load(spec, spec["model"], tok, "teacher.model").to(compute_device())
    if not spec.get("finetune", True):  # use the teacher as it is (e.g. an already fine-tuned checkpoint)
        from ketchup.runtime import process_share

        if process_share()[0] == 0:  # one writer under `accelerate launch`
            _save_untrained(model, tok, out_dir, {"steps": 0, "role": "teacher", "task": task, "finetune": False})
        return
    evaluate = dev_evaluator(tdef, tok, arch, dev_ex, spec["generation"], spec["max_source_length"],
                             spec["train"]["dev_eval_examples"])
    identity = run_identity(spec, {"train": Path(data_dir) / "train.jsonl", "dev": Path(data_dir) / "dev.jsonl",
                                   "tokenizer": tokenizer_dir, "model": spec["model"].get("name_or_path")})
    train(model, tok, Objective("sft", arch, tok), TrainData([e["source"] for e in train_ex],
                                                             [e["target"] for e in train_ex]),
          spec["train"], arch=arch, seed=spec["seed"], evaluate=evaluate, ckpt_dir=ckpt_dir, out_dir=out_dir,
          max_source_length=spec["max_source_length"], max_target_length=spec["max_target_length"],
          run_info={"name": f"teacher/{task}", "task": task, "role": "teacher"}, identity=identity)


def task_definition(spec: dict[str, Any]) -> dict[str, Any]:
    """The task's definition in a stage's spec (``task_def``: what the stage needs of it; a spec
    without one names a preset, ketchup.tasks), named."""
    from ketchup import tasks

    return tasks.named(spec["task"], spec.get("task_def"))


def _task_tokenizer(spec: dict[str, Any], tokenizer_dir: str):
    """The task's tokenizer as every model of it uses it: prompt format, EOS and padding are fixed here
    (models.prepare_tokenizer), for the teacher, whose saved tokenizer every later stage loads, and
    for the pretrained students, which must match it."""
    from ketchup.models import load_tokenizer, prepare_tokenizer

    return prepare_tokenizer(load_tokenizer(tokenizer_dir, spec.get("tokenizer_gguf_file")), spec["arch"],
                             spec.get("prompt_format", "chat"))


def pretrain(*, spec: dict[str, Any], data_path: str, tokenizer_dir: str, ckpt_dir: str, out_dir: str) -> None:
    """Task-adaptive pretraining of one student size (task, size) on the task's training text
    (ketchup.pretraining): seq2seq by span corruption, decoder-only by next-token prediction, both
    supervised pairs for the one training loop's 'sft' objective. The model kept is the one with the
    lowest loss on the held-out examples' documents (the loop's dev metric is minus that loss)."""
    from ketchup import pretraining, specs
    from ketchup.config import pretrain_optim
    from ketchup.methods import Objective
    from ketchup.training import train

    task, arch, student, settings = spec["task"], spec["arch"], spec["student"], spec["pretrain"]
    tok = _task_tokenizer(spec, tokenizer_dir)
    examples = sources.examples(task_definition(spec), data_path, "", spec["calculator"])  # raw text: no prompt
    kept, held = pretraining.hold_out(examples, settings["dev_examples"], spec["seed"],
                                      f"students.{student}.pretrain.dev_examples")
    if arch == "seq2seq":
        specs.check_sentinels(spec, len(pretraining.sentinel_ids(tok)))
    length = max(spec["max_source_length"], spec["max_target_length"])  # of a document, EOS included
    data_, dev = (pretraining.pairs(tok, arch, pretraining.documents(part), settings, spec["seed"], stream,
                                    spec["max_source_length"], length)
                  for part, stream in ((kept, pretraining.TRAIN_STREAM), (held, pretraining.DEV_STREAM)))
    model = _build_or_load(spec, spec["model"], tok, f"students.{student}").to(compute_device())
    objective = Objective("sft", arch, tok)
    train(model, tok, objective, data_, pretrain_optim(settings), arch=arch, seed=spec["seed"],
          evaluate=pretraining.heldout_loss(objective, dev, tok.pad_token_id, arch, settings["batch_size"]),
          ckpt_dir=ckpt_dir, out_dir=out_dir, max_source_length=spec["max_source_length"], max_target_length=length,
          run_info={"name": f"pretrain/{task}/{student}", "task": task, "student": student, "role": "pretrain"},
          identity=run_identity(spec, {"train": data_path, "tokenizer": tokenizer_dir}))


def run_identity(spec: dict[str, Any], inputs: dict[str, str | Path | None]) -> dict[str, Any]:
    """What determines a training run besides its optimiser settings: the stage's whole spec and the
    content digests of its input files and folders (part of the resume fingerprint)."""
    from ketchup.digests import input_digests

    return {"spec": spec, "inputs": input_digests(inputs)}


def outputs(*, task: dict[str, Any], arch: str, model_dir: str, data_path: str, prompt: str, gen: dict[str, Any],
            max_source_length: int, out_path: str, teacher: bool = False, teacher_dtype_setting: str = "auto") -> None:
    """Greedy outputs of a saved model on one split: {id, source, reference, prediction} per line
    (a teacher's in ``teacher.dtype``; ``task``: the task's definition)."""
    from ketchup.models import load_model, load_tokenizer

    tok = load_tokenizer(model_dir)
    dtype = teacher_dtype(teacher_dtype_setting) if teacher else None
    model = load_model(arch, model_dir, dtype=dtype).to(compute_device())
    write_predictions(model, tok, arch, task, data_path, prompt, gen, max_source_length, out_path)


def write_predictions(model, tok, arch: str, task: dict[str, Any], data_path: str | Path, prompt: str,
                      gen: dict[str, Any], max_source_length: int, out_path: str) -> None:
    """Every process of the job decodes its share (generate_texts); the main one writes the file."""
    from ketchup.runtime import process_share

    examples = sources.examples(task, data_path, prompt, gen.get("calculator", False))
    preds = generate_texts(model, tok, arch, [e["source"] for e in examples], gen, max_source_length,
                           f"generate {Path(out_path).parent.name}/{Path(out_path).stem}")
    if process_share()[0] == 0:
        write_jsonl(out_path, ({"id": e["id"], "source": e["source"], "reference": e["target"], "prediction": p}
                               for e, p in zip(examples, preds)))


def student(*, spec: dict[str, Any], data_dir: str, teacher_outputs_dir: str, teacher_dir: str, init_dir: str | None,
            ckpt_dir: str, out_dir: str, predictions_path: str) -> None:
    """Train one student (task, size, method, seed) with its method's objective, then write the
    dev-best model's greedy test predictions (in this process: a job of its own would spend more
    time importing torch than generating)."""
    from ketchup.models import cut_from_teacher, load_model, load_tokenizer

    task, arch, method = spec["task"], spec["arch"], spec["method"]
    tok = load_tokenizer(teacher_dir)
    # RL students start from the KL student of the same task, size and seed; the others of a size
    # with a pretrain block from its pretrained model.
    if init_dir:
        print(f"student {task}/{spec['student']}/{method}: starting from {init_dir}", file=sys.stderr)
        model = load_model(arch, init_dir).to(compute_device())
    elif "from_teacher" in spec["model"]:  # the saved (plain float) teacher, cut down
        model = cut_from_teacher(load_model(arch, teacher_dir), arch, spec["model"]["from_teacher"],
                                 f"students.{spec['student']}.from_teacher").to(compute_device())
    else:
        model = _build_or_load(spec, spec["model"], tok, f"students.{spec['student']}").to(compute_device())
        if "name_or_path" in spec["model"]:  # before any work: a student with another tokenizer stops here
            check_student_tokenizer(spec, model, teacher_dir)
    from ketchup.runtime import process_share

    rank, world = process_share()
    if method == "prompted":  # the student as it is, without distillation: saved untrained
        if rank == 0:  # under `accelerate launch`, the main process writes the model
            _save_untrained(model, tok, out_dir, {"steps": 0, "method": method})
    else:
        _train_student(spec, model, tok, data_dir, teacher_outputs_dir, teacher_dir, init_dir, ckpt_dir, out_dir)
    if world > 1:  # the main process has written the model: each process predicts its share of test
        from accelerate import PartialState

        PartialState().wait_for_everyone()  # the state process_share set up
    saved = load_model(arch, out_dir).to(compute_device())  # untrained (prompted) or dev-best
    write_predictions(saved, tok, arch, task_definition(spec), Path(data_dir) / "test.jsonl", spec["prompt"],
                      spec["generation"], spec["max_source_length"], predictions_path)


def check_student_tokenizer(spec: dict[str, Any], model, teacher_dir: str) -> None:
    """A student loaded by ``name_or_path`` has the teacher's tokenizer (ketchup.tokenizer_match): both
    tokenizers as the pipeline prepares them (models.prepare_tokenizer, with the prompt format the
    teacher's saved tokenizer shows), the seq2seq decoder-start ids of both models, the student's rows."""
    from ketchup import tokenizer_match
    from ketchup.models import load_tokenizer, prepare_tokenizer

    block, arch = spec["model"], spec["arch"]
    key = f"students.{spec['student']}.name_or_path"
    teacher_tok = load_tokenizer(teacher_dir)
    fmt = "chat" if teacher_tok.chat_template else "plain"
    try:
        own = load_tokenizer(block["name_or_path"], block.get("gguf_file"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key '{key}': cannot load the student's tokenizer from {block['name_or_path']!r} "
                          f"to check it against the teacher's ({exc})") from exc
    seq2seq = arch == "seq2seq"
    teacher_start = read_json(Path(teacher_dir) / "config.json").get("decoder_start_token_id") if seq2seq else None
    tokenizer_match.check(
        tokenizer_match.of_tokenizer(prepare_tokenizer(teacher_tok, arch, fmt), teacher_dir, teacher_start),
        tokenizer_match.of_tokenizer(prepare_tokenizer(own, arch, fmt), block["name_or_path"],
                                     model.config.decoder_start_token_id if seq2seq else None,
                                     model.config.vocab_size),
        key)


def _train_student(spec: dict[str, Any], model, tok, data_dir: str, teacher_outputs_dir: str, teacher_dir: str,
                   init_dir: str | None, ckpt_dir: str, out_dir: str) -> None:
    from ketchup import registry
    from ketchup.batching import Decoding
    from ketchup.calculator import processors
    from ketchup.methods import Objective
    from ketchup.models import load_model
    from ketchup.training import TrainData, train

    task, arch, method, tdef = spec["task"], spec["arch"], spec["method"], task_definition(spec)
    calc = spec["generation"].get("calculator", False)
    dev_ex = sources.examples(tdef, Path(data_dir) / "dev.jsonl", spec["prompt"], calc)
    if registry.get(method).trains_on == "ground_truth":
        train_path = Path(data_dir) / "train.jsonl"
        train_ex = sources.examples(tdef, train_path, spec["prompt"], calc)
        data_ = TrainData([e["source"] for e in train_ex], [e["target"] for e in train_ex])
    else:
        train_path = Path(teacher_outputs_dir) / "train.jsonl"
        rows = read_jsonl(train_path)
        data_ = TrainData([r["source"] for r in rows], [r["prediction"] for r in rows])
    teacher_model = (load_model(arch, teacher_dir, dtype=teacher_dtype(spec.get("teacher_dtype", "auto")))
                     if registry.get(method).needs_teacher else None)
    objective = Objective(method, arch, tok, teacher=teacher_model, max_new_tokens=spec["max_target_length"],
                          rl=spec.get("rl", {}), k=spec.get("k", 1), divergence=spec.get("divergence", {}),
                          logits_processor=processors(spec["generation"], tok), decoding=Decoding.of(spec["generation"]))
    evaluate = dev_evaluator(tdef, tok, arch, dev_ex, spec["generation"], spec["max_source_length"],
                             spec["train"]["dev_eval_examples"])
    train(model, tok, objective, data_, spec["train"], arch=arch, seed=spec["seed"], evaluate=evaluate,
          ckpt_dir=ckpt_dir, out_dir=out_dir, max_source_length=spec["max_source_length"],
          max_target_length=spec["max_target_length"],
          run_info={"name": f"{task}/{spec['student']}/{method}", "task": task, "student": spec["student"],
                    "method": method, "k": spec.get("k")},
          identity=run_identity(spec, {"train": train_path, "dev": Path(data_dir) / "dev.jsonl",
                                       "teacher": teacher_dir, "init": init_dir,
                                       "model": spec["model"].get("name_or_path")}))
