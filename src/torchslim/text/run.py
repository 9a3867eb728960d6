"""Runs a sentence-embedding recipe: the fp32 model is the teacher and the reference; each stage changes the
student encoder (prune, drop layers, distill) or compiles it for ONNX Runtime (quantize); the artifact is saved,
reloaded and measured against the fp32 model on held-out sentences.

The classification runner's guarantees hold here too: everything is checked before the first stage, nothing of a
failed run is left, outputs are published together with ``metrics.json`` last, and every figure of the compressed
model is measured on the artifact as reloaded from disk.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from torchslim._errors import ConfigError
from torchslim.artifact import artifact_digest, artifact_size, fresh_dir, publish, sign_artifact
from torchslim.artifact import update_manifest, write_bytes_atomic
from torchslim.domain import Domain
from torchslim.evaluate import check_constraints, count_params, timed_when_idle
from torchslim.recipe import Recipe
from torchslim.text.artifact import SentenceEmbedder, load_text_artifact, save_text_artifact, text_artifact_bytes
from torchslim.text.data import SentenceSplits, load_sentence_splits
from torchslim.text.encoder import SentenceEncoder
from torchslim.text.measure import (embed_all, fidelity, ort_peak_memory_bytes, side_by_side_latency,
                                    token_batches, torch_peak_memory_bytes)
from torchslim.text.source import TextModel, load_model_spec
from torchslim.text.tokenizer import Tokenizer

METRICS = "metrics.json"
# Held-out sentences the fidelity is measured on (the first of the seeded split): enough for the mean cosine to
# settle to ~1e-3, few enough that the fp32 reference runs in seconds.
MEASURED_TEST, MEASURED_VAL = 1000, 500
OUTPUTS = ("artifact", "model.onnx", "report.md", "report.html", METRICS)


def _log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


@dataclass
class TextRunContext:
    """What text stages read and change: the student encoder, the ORT graph compiled from it, the teacher."""

    recipe: Recipe
    domain: Domain
    splits: SentenceSplits
    teacher: TextModel
    tokenizer: Tokenizer
    encoder: SentenceEncoder
    onnx: Optional[bytes] = None
    onnx_kind: Optional[str] = None
    onnx_weight_map: Optional[dict[str, dict]] = None  # which graph initializers hold which encoder weights
    records: list[dict[str, Any]] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    stage_index: int = 0
    log: Callable[[str], None] = _log_stderr

    @property
    def seed(self) -> int:
        return self.recipe.seed + self.stage_index



def prepare_text(recipe: Recipe, *, log: Callable[[str], None] = _log_stderr) -> TextRunContext:
    """Everything checked before anything trains: the corpus, the model directory, the stage order."""
    domain = recipe.domain
    try:
        splits = load_sentence_splits(domain.data, base_dir=domain.base_dir)
        teacher = load_model_spec(domain.model, domain.base_dir)
    except ConfigError as exc:
        raise exc.within(source=domain.source) from None
    tokenizer = Tokenizer(teacher.tokenizer_json, teacher.max_seq_length, notify=log)
    ctx = TextRunContext(recipe, domain, splits, teacher, tokenizer, copy.deepcopy(teacher.encoder), log=log)
    from torchslim.text.stages import TEXT_STAGES

    # Checks see a copy: a stage that changes the encoder's depth (drop_layers) applies itself to the copy, so the
    # checks of later stages (a distillation layer map) see the encoder they will get.
    checking = dataclasses.replace(ctx, encoder=copy.deepcopy(ctx.encoder), records=[])
    compiled = False
    for stage in recipe.stages:
        handler = TEXT_STAGES[stage.name]
        where = f"stages[{stage.index}].{stage.name}"
        if handler.changes_model and compiled:
            raise ConfigError(where, "comes after quantize: prune, drop_layers and distill change the torch "
                                     "encoder, so they must come before it", recipe.source)
        compiled = compiled or stage.name == "quantize"
        if handler.check is not None:
            try:
                handler.check(checking, stage.config)
            except ConfigError as exc:
                raise exc.within(where, recipe.source) from None
    return ctx


def run_text_recipe(recipe: Recipe, out: str | Path, *, sign_key: str | Path | None = None,
                    threads: int | None = None, log: Callable[[str], None] = _log_stderr) -> dict[str, Any]:
    """Run a sentence-embedding recipe and publish ``out/artifact``, ``out/metrics.json``, ``out/report.md``
    (and ``out/model.onnx`` when an export stage asks)."""
    from torchslim.runner import seed_everything
    from torchslim.text.stages import TEXT_STAGES

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        out = Path(out)
        ctx = prepare_text(recipe, log=log)
        for stage in recipe.stages:
            ctx.stage_index = stage.index
            seed_everything(recipe.seed + stage.index)
            log(f"stage {stage.index}: {stage.name}")
            record = TEXT_STAGES[stage.name].run(ctx, stage.config)
            ctx.records.append({"stage": stage.name, "index": stage.index, **record})
        return finish_text(ctx, out, sign_key=sign_key)
    finally:
        torch.set_num_threads(before)


def _manifest_extra(ctx: TextRunContext) -> dict[str, Any]:
    stages = [{s.name: s.config.model_dump(mode="json")} for s in ctx.recipe.stages]
    return {"domain": ctx.domain.to_dict(), "recipe": {"seed": ctx.recipe.seed, "stages": stages},
            "seed": ctx.recipe.seed, "data": ctx.splits.info, "source_model": ctx.teacher.name}


def finish_text(ctx: TextRunContext, out: Path, *, sign_key: str | Path | None = None) -> dict[str, Any]:
    """Save, reload, measure against the fp32 model, publish (``metrics.json`` last)."""
    staging = fresh_dir(out / "publish")
    try:
        artifact = save_text_artifact(ctx.encoder.cpu().eval(), staging / "artifact",
                                      tokenizer_json=ctx.teacher.tokenizer_json,
                                      max_seq_length=ctx.teacher.max_seq_length, onnx=ctx.onnx,
                                      onnx_kind=ctx.onnx_kind, weight_map=ctx.onnx_weight_map,
                                      extra=_manifest_extra(ctx))
        metrics = measure_text_artifact(artifact, ctx.domain, ctx.splits, ctx.teacher, tokenizer=ctx.tokenizer,
                                        log=ctx.log)
        update_manifest(artifact, metrics={"metric": "cosine", "value": metrics["value"],
                                           "spearman": metrics["spearman"]})
        metrics.update(size_bytes=artifact_size(artifact), artifact_sha256=artifact_digest(artifact),
                       stages=ctx.records)
        metrics["compression_ratio"] = metrics["baseline_size_bytes"] / metrics["size_bytes"]
        names = ["artifact"]
        if "onnx" in ctx.formats:
            from torchslim.text.onnx import export_onnx

            reloaded = load_text_artifact(artifact)
            graph = ctx.onnx if ctx.onnx is not None else export_onnx(reloaded.encoder)
            write_bytes_atomic(staging / "model.onnx", graph)
            names.append("model.onnx")
        if sign_key is not None:
            sign_artifact(artifact, sign_key)
        markdown, page = render_text_report(metrics, ctx.domain.name)
        write_bytes_atomic(staging / "report.md", markdown.encode())
        write_bytes_atomic(staging / "report.html", page.encode())
        write_bytes_atomic(staging / METRICS, (json.dumps(metrics, indent=2) + "\n").encode())
        publish(staging, out, [*names, "report.md", "report.html", METRICS], commit=METRICS, outputs=OUTPUTS)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return metrics


def measure_text_artifact(artifact: Path, domain: Domain, splits: SentenceSplits, teacher: TextModel, *,
                          verify_key: str | Path | None = None, tokenizer: Optional[Tokenizer] = None,
                          log: Callable[[str], None] = _log_stderr) -> dict[str, Any]:
    """The artifact, reloaded in the domain's runtime (an int8 graph always in ONNX Runtime), against the fp32
    model (torch eager) on the test sentences: mean cosine, Spearman of pair similarities, bytes, parameters,
    latency side by side, memory. The constraints are judged on the test split and, for decisions, on the
    validation split (``val_constraints``)."""
    threads = torch.get_num_threads()
    runtime = domain.runtime
    model = load_text_artifact(artifact, runtime=runtime, verify_key=verify_key, intra_op_threads=threads)
    if model.int8 and runtime == "torch":  # torch would compute with the dequantized weights: another model
        runtime = "onnxruntime"
        log("note: the artifact is an int8 ONNX graph, which only ONNX Runtime executes; it is measured there, "
            "not in the domain's runtime torch")
        model = SentenceEmbedder(model.encoder, model.tokenizer, runtime=runtime, onnx=model.onnx,
                                 intra_op_threads=threads, manifest=model.manifest)
    tokenizer = tokenizer or Tokenizer(teacher.tokenizer_json, teacher.max_seq_length, notify=log)
    model.tokenizer.notify = lambda _message: None  # the reference's tokenizer says it once
    reference = teacher.encoder.eval()
    test_sentences, val_sentences = splits.test[:MEASURED_TEST], splits.val[:MEASURED_VAL]

    def teacher_embed(sentences):
        with torch.inference_mode():
            return reference(*tokenizer(sentences))

    log(f"measuring on {len(test_sentences)} held-out sentences")
    ref_test, got_test = embed_all(teacher_embed, test_sentences), embed_all(model, test_sentences)
    test = fidelity(ref_test, got_test)
    base_test = fidelity(ref_test, ref_test)
    val = fidelity(embed_all(teacher_embed, val_sentences), embed_all(model, val_sentences))

    batches = token_batches(tokenizer, test_sentences)
    candidate: Any = model.encoder
    if model.session is not None:  # a session whose threads sleep between runs, so it does not slow the baseline
        from torchslim.text.onnx import OrtEncoder

        candidate = OrtEncoder(model.onnx, threads, spinning=False)
    timed = timed_when_idle(lambda: side_by_side_latency(reference, candidate, batches))
    ids, mask = batches["batch_64"]
    if model.session is not None:
        peak = ort_peak_memory_bytes(model.onnx, ids, mask, threads)
    else:
        peak = torch_peak_memory_bytes(model.encoder, ids, mask)
    # the uncompressed fp32 file: dense tensors, the tokenizer
    baseline_bytes = text_artifact_bytes(reference, tokenizer_json=teacher.tokenizer_json,
                                         max_seq_length=teacher.max_seq_length, compress=False)
    size = artifact_size(artifact)
    params, nonzero = count_params(model.encoder)
    metrics: dict[str, Any] = {
        "metric": "cosine", "value": test["cosine"], "baseline_value": base_test["cosine"],
        "spearman": test["spearman"], "baseline_spearman": base_test["spearman"],
        "size_bytes": size, "baseline_size_bytes": baseline_bytes, "compression_ratio": baseline_bytes / size,
        "params": params, "nonzero_params": nonzero, "baseline_params": count_params(reference)[0],
        "latency_ms": timed["latency_ms"], "baseline_latency_ms": timed["baseline_latency_ms"],
        "latency_spread": timed["latency_spread"], "others_running": timed["others_running"], "cores": timed["cores"],
        **{f"latency_ratio_{key}": timed["latency_spread"][key]["ratio"] for key in ("batch_64", "batch_32",
                                                                                      "batch_1")},
        "threads": threads, "runtime": runtime, "seed": int(model.manifest.get("seed", 0)),
        "peak_memory_bytes": peak, "baseline_peak_memory_bytes": torch_peak_memory_bytes(reference, ids, mask),
        "memory_method": ("ONNX Runtime: peak resident memory a fresh process gains loading the graph and "
                          "running one batch of 64"
                          if model.session is not None else "torch: tensors held + allocator peak, batch 64"),
        "int8_kernels": bool(model.int8), "onnx_kind": model.manifest.get("text", {}).get("onnx_kind"),
        "encoder": model.encoder.config, "data": {**splits.info, "measured_test": len(test_sentences),
                                                  "measured_val": len(val_sentences)},
        "reference_model": teacher.name,
        "val_value": val["cosine"], "val_spearman": val["spearman"], "baseline_val_value": 1.0,
    }
    metrics["constraints"] = check_constraints(domain.constraints, metrics)
    judged = {**metrics, "value": val["cosine"], "baseline_value": 1.0}
    metrics["val_constraints"] = check_constraints(domain.constraints, judged)
    metrics["artifact_sha256"] = artifact_digest(artifact)
    return metrics


def text_report_blocks(m: dict[str, Any], name: str) -> list[Any]:
    """The report's blocks (one source for report.md and report.html): fidelity, size, speed, memory and what each
    stage did."""
    from torchslim.evaluate import timing_caveat
    from torchslim.report._document import Heading, Items, Paragraph, Table
    from torchslim.report._sections import summary_rows

    caveat = timing_caveat(m)
    blocks = [Heading(1, f"torchslim report: {name} (sentence embeddings)"),
              Paragraph(f"Reference: the fp32 model ({m['reference_model']}) in torch eager, measured side by side "
                        f"in the same process with {m['threads']} thread(s); the compressed model runs in "
                        f"`{m['runtime']}`" + (f" ({m['onnx_kind']})" if m.get("onnx_kind") else "") + "."),
              Table(("", "baseline", "compressed"), tuple(tuple(r) for r in summary_rows(m))),
              *([Paragraph(caveat)] if caveat else []),
              Paragraph(f"Memory: {m['memory_method']}."), Heading(2, "Stages")]
    stages = []
    for r in m.get("stages", []):
        detail = ", ".join(f"{k}={v}" for k, v in r.items() if k not in ("stage", "index") and not isinstance(v, (
            dict, list)))
        stages.append(f"{r['index']}: **{r['stage']}** {detail}")
    blocks.append(Items(tuple(stages)))
    if m.get("constraints"):
        blocks += [Heading(2, "Constraints"),
                   Items(tuple(f"{k}: {'met' if c['met'] else 'NOT met'} (limit {c['limit']}, measured "
                               f"{c['measured']:.6g})" for k, c in m["constraints"].items()))]
    return blocks


def render_text_report(m: dict[str, Any], name: str) -> tuple[str, str]:
    """(report.md, report.html) of a sentence-embedding run."""
    from torchslim.report._document import to_html, to_markdown

    blocks = text_report_blocks(m, name)
    return to_markdown(blocks), to_html(f"torchslim report: {name}", blocks)


def evaluate_text_artifact(path: str | Path, domain: Domain, *, verify_key: str | Path | None = None,
                           log: Callable[[str], None] = _log_stderr) -> dict[str, Any]:
    """Re-measure a sentence-embedding artifact on a domain's held-out sentences against the domain's model."""
    try:
        splits = load_sentence_splits(domain.data, base_dir=domain.base_dir)
        teacher = load_model_spec(domain.model, domain.base_dir)
    except ConfigError as exc:
        raise exc.within(source=domain.source) from None
    metrics = measure_text_artifact(Path(path), domain, splits, teacher, verify_key=verify_key, log=log)
    from torchslim.artifact import read_manifest

    metrics["recorded_value"] = read_manifest(path).get("metrics", {}).get("value")
    return metrics
