"""Command line: parses, calls the API, prints. Bad input is one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from torchslim._errors import ConfigError

MAX_THREADS = 4096  # torch and ONNX Runtime take a C int; no machine this runs on has more cores


def _fail(exc: ConfigError) -> None:
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _path_error(exc: click.BadParameter) -> ConfigError | None:
    """click's ``File 'x.yaml' is a directory.`` for a path argument, as ``x.yaml: RECIPE: is a directory``."""
    import ast
    import re

    if exc.param is None or not isinstance(exc.param.type, click.Path):
        return None
    m = re.fullmatch(r"\w+ ('.*'|\".*\") (.+?)\.?", exc.message, re.S)
    if m is None:
        return None
    try:
        name = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    param = exc.param
    field = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
    return ConfigError(field, m.group(2), name)


class _Group(click.Group):
    """Turns ConfigError anywhere below into the one-line error and exit code 2.

    Anything else that escapes a command is a bug: one line asking for a report (exit code 1), or the traceback
    with ``TORCHSLIM_TRACEBACK=1``.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ConfigError as exc:
            _fail(exc)
        except click.BadParameter as exc:
            converted = _path_error(exc)
            if converted is None:  # a flag's value: one line naming the flag, as for every other bad input
                param = exc.param
                name = (max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
                        ) if param is not None else ""
                message = "is required and was not given" if isinstance(exc, click.MissingParameter) else exc.message
                converted = ConfigError(name, message)
            _fail(converted)
        except click.UsageError as exc:  # an unknown flag or command: one line, not click's usage block
            _fail(ConfigError("", exc.format_message().replace("\n", " ")))
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:  # `torchslim inspect A | head` closed the pipe: the reader has what it wanted
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error when Python flushes
            sys.exit(0)
        except OSError as exc:  # the file system refused: --out under a file, a name too long, a full disk
            from torchslim._yaml import os_reason

            _fail(ConfigError("", os_reason(exc), exc.filename))
        except Exception as exc:
            import os

            if os.environ.get("TORCHSLIM_TRACEBACK"):
                raise
            detail = " ".join(str(exc).split())[:150]
            click.echo(f"error: unexpected {type(exc).__name__}: {detail} (a bug in torchslim: please report it "
                       f"with the files that caused it; TORCHSLIM_TRACEBACK=1 shows the traceback)", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="torchslim")
def cli() -> None:
    """torchslim: prune, quantize and distill PyTorch models for a domain, and measure the result honestly."""
    import warnings

    from torchslim._errors import TorchslimWarning

    shown = warnings.showwarning

    def one_line(message, category, *args, **kwargs):  # torchslim's own warnings without file and line
        if issubclass(category, TorchslimWarning):
            click.echo(f"warning: {message}", err=True)
        else:
            shown(message, category, *args, **kwargs)

    warnings.showwarning = one_line


def _trust_options(fn: Any) -> Any:
    """--trust-code, --code-dir and --verify-key: what opening an artifact may do (see the README's trust model)."""
    fn = click.option("--verify-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
                      help="Public key (PEM): refuse the artifact unless it carries a signature made with its "
                           "private key (torchslim sign).")(fn)
    fn = click.option("--code-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                      help="Folder the factory module of a --trust-code artifact is imported from.")(fn)
    return click.option("--trust-code", is_flag=True,
                        help="Allow an artifact built by a user factory (module:function) to import and call it. "
                             "Without it such an artifact is refused: opening it would run its code.")(fn)


def _silent(_message: str) -> None:
    pass


def _quiet_option(fn: Any) -> Any:
    """--quiet: no progress bars or stage messages on stderr (for scripts and logs); results and errors stay."""
    def enable(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
        if value:
            import os

            os.environ["TQDM_DISABLE"] = "1"
        return value

    return click.option("--quiet", "-q", is_flag=True, callback=enable, expose_value=True,
                        help="No progress bars or stage messages on stderr; results and errors are still printed.")(fn)


def _check_out(out: Path) -> None:
    """--out must be, or be creatable as, a folder: its nearest existing ancestor must be one."""
    for folder in (out, *out.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                raise ConfigError("--out", f"{out}: {folder} is not a folder" if folder != out else
                                           f"{out} is not a folder")
            return


def _warn_runtime(recipe: Path, loaded: Any) -> None:
    """Say which quantize stages the domain's runtime will run slower than their int8 promises."""
    from torchslim.quantize.stage import runtime_warning

    if loaded.domain.task == "sentence-embedding":  # its quantize stage always runs in ONNX Runtime
        return
    for stage in loaded.stages:
        warning = runtime_warning(stage.config, loaded.domain.runtime) if stage.name == "quantize" else None
        if warning:
            click.echo(f"warning: {recipe}: stages[{stage.index}].quantize: {warning}", err=True)


def _warn_if_metrics_differ(artifact: Path) -> None:
    from torchslim.runner import metrics_mismatch

    warning = metrics_mismatch(artifact)
    if warning is not None:
        click.echo(f"warning: {warning}", err=True)


def constraint_line(key: str, test: dict[str, Any], validation: dict[str, Any] | None = None) -> str:
    """``constraint max_metric_drop: NOT met (limit 0.02, measured 0.0233; validation: met, 0.0133)``: the test
    split's verdict, and the validation split's where it differs (what ``auto`` decides on)."""
    on_val = "" if validation is None or validation["measured"] == test["measured"] else (
        f"; validation: {'met' if validation['met'] else 'NOT met'}, {validation['measured']:.6g}")
    return (f"constraint {key}: {'met' if test['met'] else 'NOT met'} (limit {test['limit']}, "
            f"measured {test['measured']:.6g}{on_val})")


def _print_summary(metrics: dict[str, Any], out: Path | None = None) -> None:
    from torchslim.evaluate import timing_caveat
    from torchslim.report import int8_slowdown_reason, slowdown_reason, summary_rows

    rows = summary_rows(metrics)
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows + [("", "baseline", "")])
    click.echo(f"{'':<{w0}}  {'baseline':>{w1}}  compressed")
    for q, b, c in rows:
        click.echo(f"{q:<{w0}}  {b:>{w1}}  {c}")
    for note in (slowdown_reason(metrics), int8_slowdown_reason(metrics), timing_caveat(metrics)):
        if note:
            click.echo(note)
    for key, c in metrics["constraints"].items():
        click.echo(constraint_line(key, c, metrics.get("val_constraints", {}).get(key)))
    if out is not None:
        from torchslim.runner import OUTPUTS

        click.echo("wrote " + ", ".join(str(out / name) for name in OUTPUTS if (out / name).exists()))


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: metrics.json, report.md, artifact/.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run in the same --out folder.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set stages.0.train.epochs=5, or its domain's, e.g. --set "
                   "'domain.data.fold={index: 0, of: 5}' (repeatable).")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
              help="CPU threads for training and measuring (default: torch's, one per core). Small models run "
                   "fastest on 1: their kernels are too short to share, and a busy core stalls the others.")
@click.option("--sign-key", type=click.Path(path_type=Path), default=None,
              help="EC private key (PEM): sign the artifact before it is published (see `torchslim sign`). "
                   "Checked before the first stage.")
@click.option("--overwrite", is_flag=True, help="Replace the earlier run --out holds (refused without it).")
@_quiet_option
def run(recipe: Path, out: Path, resume: bool, overrides: tuple[str, ...], threads: int | None,
        sign_key: Path | None, overwrite: bool, quiet: bool) -> None:
    """Run RECIPE's stages and write the compressed model and its measurements to --out."""
    _check_out(out)
    if resume and overwrite:
        raise ConfigError("--overwrite", "cannot be given with --resume: --resume continues the run --out holds, "
                                         "--overwrite replaces it")
    from torchslim.search.study import STUDY_MARKER

    if (out / STUDY_MARKER).exists():  # its report.html, best/ and trials.csv are not a run's to replace
        raise ConfigError("--out", f"{out} holds a search ({STUDY_MARKER}): run into another --out")
    if not (resume or overwrite) and (out / "metrics.json").exists():
        raise ConfigError("--out", f"{out} holds an earlier run (metrics.json): pass --overwrite to replace it, or "
                                   f"--resume to continue an interrupted one")
    from torchslim.runner import WORK_DIR

    if resume and (out / "metrics.json").exists() and not (out / WORK_DIR).exists():
        raise ConfigError("--resume", f"{out} holds a finished run (metrics.json): nothing to resume; pass "
                                      f"--overwrite to run it again")
    from torchslim.artifact import SIGNATURE, ArtifactError, check_signing_key
    from torchslim.distributed import end_finished_worker, init_from_env, is_main, shutdown
    from torchslim.recipe import load_recipe
    from torchslim.runner import run_recipe

    if sign_key is not None:
        try:
            check_signing_key(sign_key)
        except ArtifactError as exc:
            raise ConfigError("--sign-key", exc.message, exc.source) from None
    init_from_env()  # under torchrun: join the process group (gloo on CPU, nccl on GPU)
    worker = not is_main()  # a rank other than 0 (after shutdown() every process reads as rank 0)
    try:
        loaded = load_recipe(recipe, list(overrides))
        if is_main():
            _warn_runtime(recipe, loaded)  # before hours of training, not only in `check`
        metrics = run_recipe(loaded, out, resume=resume, sign_key=sign_key, threads=threads,
                             **({"log": _silent} if quiet else {}))
        if is_main():
            _print_summary(metrics, out)
            if sign_key is not None:
                click.echo(f"signed {out / 'artifact'} ({SIGNATURE})")
    finally:
        shutdown()
    if worker:
        end_finished_worker()


@cli.command()
@click.argument("recipe", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a recipe value.")
def check(recipe: Path, overrides: tuple[str, ...]) -> None:
    """Check RECIPE (files, keys, ranges, names, model/data fit) without training anything."""
    from torchslim.recipe import load_recipe
    from torchslim.runner import prepare

    loaded = load_recipe(recipe, list(overrides))
    if loaded.domain.task == "sentence-embedding":
        from torchslim.text.run import prepare_text

        info = prepare_text(loaded).splits.info
        click.echo(f"ok: {recipe}: domain {loaded.domain.name!r}, {len(loaded.stages)} stage(s) "
                   f"({', '.join(s.name for s in loaded.stages)}), {info['train']}/{info['val']}/{info['test']} "
                   f"train/val/test sentences")
        return
    ctx = prepare(loaded)
    _warn_runtime(recipe, loaded)
    click.echo(f"ok: {recipe}: domain {loaded.domain.name!r}, {len(loaded.stages)} stage(s) "
               f"({', '.join(s.name for s in loaded.stages)}), data {ctx.splits.info['train']}/"
               f"{ctx.splits.info['val']}/{ctx.splits.info['test']} train/val/test")


@cli.command(name="eval")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--domain", "domain_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Domain file whose data (test split) the model is measured on.")
@click.option("--json", "as_json", is_flag=True, help="Print only the metrics JSON object on stdout.")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=None,
              help="CPU threads to measure with (default: torch's, one per core). Latencies compare only at the "
                   "same thread count: the run's is in its metrics.json.")
@_trust_options
@_quiet_option
def eval_(artifact: Path, domain_path: Path, as_json: bool, threads: int | None, trust_code: bool,
          code_dir: Path | None, verify_key: Path | None, quiet: bool) -> None:
    """Re-measure a saved ARTIFACT on a domain's data (a factory module is looked for in the domain's folder
    unless --code-dir says otherwise)."""
    from torchslim.domain import load_domain
    from torchslim.runner import evaluate_artifact

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    domain = load_domain(domain_path)
    metrics = evaluate_artifact(artifact, domain, trust_code=trust_code, code_dir=code_dir, verify_key=verify_key)
    _warn_if_metrics_differ(artifact)
    if as_json:
        click.echo(json.dumps(metrics, indent=2))
    else:
        _print_summary(metrics)


@cli.command(name="export")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True,
              help="File format to write.")
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="File to write, e.g. model.onnx.")
@_trust_options
def export_(artifact: Path, fmt: str, out: Path, trust_code: bool, code_dir: Path | None,
            verify_key: Path | None) -> None:
    """Write a saved ARTIFACT as an ONNX model: its int8 model when it holds one, else an fp32 export."""
    from torchslim.export.artifact import export_artifact

    path, int8 = export_artifact(artifact, out, trust_code=trust_code, code_dir=code_dir, verify_key=verify_key)
    click.echo(f"wrote {path} ({'int8 model' if int8 else 'fp32 export'}, {path.stat().st_size:,} bytes)")


@cli.command(name="inspect")
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print layers, totals and the plain manifest as one JSON object.")
@click.option("--verify-key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Public key (PEM): refuse the artifact unless it carries a signature made with its private key.")
def inspect_(artifact: Path, as_json: bool, verify_key: Path | None) -> None:
    """Show what a saved ARTIFACT stores per layer (shape, sparsity, bits, encoding, bytes) and in total.

    Reads the manifest and the stored tensors only: no model is built and no code is imported."""
    from torchslim.artifact import describe_artifact

    if verify_key is not None:
        from torchslim.artifact._signing import verify_artifact

        verify_artifact(artifact, verify_key)
    info = describe_artifact(artifact)
    _warn_if_metrics_differ(artifact)
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    rows = [("layer", "shape", "sparsity", "bits", "encoding", "bytes")]
    for r in info["layers"]:
        rows.append((r["name"], "x".join(map(str, r["shape"])), "" if r["sparsity"] is None else f"{r['sparsity']:.1%}",
                     str(r["bits"]), r["encoding"], f"{r['bytes']:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    t, b = info["totals"], info["totals"]["bytes"]
    click.echo(f"params {t['params']:,}, nonzero {t['nonzero']:,} ({t['nonzero'] / max(t['params'], 1):.1%})")
    click.echo(f"bytes {b['total']:,}: tensors {b['tensors']:,}, manifest {b['manifest']:,}, container "
               f"{b['container']:,}" + "".join(f", {k} {v:,}" for k, v in b["files"].items()
                                              if k not in ("manifest.json", "model.safetensors")))
    m = info["manifest"]
    measured = m.get("metrics") or {}
    click.echo(f"format {m['format']} v{m['version']}, architecture {json.dumps(m['architecture'])}"
               + (f", {measured['metric']} {measured['value']:.4f}" if {"metric", "value"} <= set(measured) else ""))


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path),
              help="EC private key (PEM, unencrypted; P-256, P-384 or P-521) to sign with.")
def sign(artifact: Path, key: Path) -> None:
    """Sign a saved ARTIFACT folder: writes ARTIFACT/model.sig, covering every other file in the folder."""
    from torchslim.artifact import SIGNATURE, sign_artifact

    sign_artifact(artifact, key)
    click.echo(f"signed {artifact} ({SIGNATURE})")


@cli.command()
@click.argument("artifact", type=click.Path(path_type=Path))
@click.option("--key", required=True, type=click.Path(path_type=Path),
              help="EC public key (PEM) of the signer.")
def verify(artifact: Path, key: Path) -> None:
    """Check, offline, that ARTIFACT is exactly what the holder of --key's private key signed (model.sig)."""
    from torchslim.artifact import verify_artifact

    verify_artifact(artifact, key)
    click.echo(f"verified {artifact}: signed by the key in {key}")


@cli.command()
@click.argument("domain_path", metavar="DOMAIN", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: best/, best_recipe.yaml, trials.csv, report.html, trials/N/ (and study.db).")
@click.option("--trials", type=int, default=20, show_default=True,
              help="Candidates (finished, stopped early or repeated) the study ends with; the same command resumes a "
                   "stopped search.")
@click.option("--timeout", type=float, default=None,
              help="Seconds after which no new candidate or cross-validation is started; candidates stop early "
                   "enough to leave time for cross-validating the best (--folds).")
@click.option("--storage", default=None, help="Optuna RDB URL (default: sqlite:///OUT/study.db); "
                                              "postgresql://… lets processes on several machines share the study.")
@click.option("--study", "study_name", default=None, help="Study name (default: auto-DOMAINNAME).")
@click.option("--objective", type=click.Choice(["size", "latency", "metric"]), default="size", show_default=True,
              help="What 'best' minimises among feasible candidates: bytes, batch-64 latency, or metric loss.")
@click.option("--threads", type=click.IntRange(min=1, max=MAX_THREADS), default=1, show_default=True,
              help="CPU threads per candidate; best_recipe.yaml reproduces best/ at the same count.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed of the sampler and of every candidate recipe.")
@click.option("--baseline-epochs", type=int, default=40, show_default=True,
              help="Epochs of the baseline's training (the same in every candidate); a student is distilled "
                   "for twice as many.")
@click.option("--max-epochs", type=int, default=20, show_default=True,
              help="Most fine-tune epochs of a candidate's stage (the searched budget is 1..this).")
@click.option("--lr", type=float, default=0.001, show_default=True,
              help="Learning rate of the baseline's training and of pruning's fine-tuning; k-means fine-tunes at "
                   "a tenth of it, a student distils at 10x.")
@click.option("--drop-margin", type=click.FloatRange(min=0, max=10), default=1.0, show_default=True,
              help="Standard errors of the validation drop a feasible candidate's drop must clear the limit by "
                   "to be preferred (and what the sampler is told); first preferred are those whose losses alone "
                   "(no gains counted) clear it so. Feasibility itself is the measured drop, as run reports it; "
                   "0: no preference.")
@click.option("--folds", type=int, default=3, show_default=True,
              help="Before the search trusts the best candidate's drop, its recipe runs again on this many "
                   "cross-validation folds of the training and validation data; when the drop does not hold there, "
                   "the next candidate is tried. --timeout keeps time for it. 0: no cross-validation.")
@_quiet_option
def auto(domain_path: Path, out: Path, trials: int, timeout: float | None, storage: str | None,
         study_name: str | None, objective: str, threads: int, seed: int, baseline_epochs: int, max_epochs: int,
         drop_margin: float, lr: float, folds: int, quiet: bool) -> None:
    """Search pruning, quantization and distillation of DOMAIN's model for its constraints.

    After every finished candidate, OUT/best (the best feasible artifact, else the closest), best_recipe.yaml,
    trials.csv and report.html are rewritten. Exit 0: a feasible model was found; 3: none was (the last line
    names each failed constraint); 2: bad input."""
    import math
    import os

    from torchslim.domain import MAX_SEED, load_domain
    from torchslim.search import AutoSearch, SearchSettings
    from torchslim.search.outputs import front_lines

    if seed > MAX_SEED:  # checked here, not by click: the domain module imports torch, the CLI starts without it
        raise ConfigError("--seed", f"{seed} is not in the range 0<=x<={MAX_SEED}")

    for flag, value in (("--trials", trials), ("--threads", threads), ("--baseline-epochs", baseline_epochs),
                        ("--max-epochs", max_epochs)):
        if value < 1:
            raise ConfigError(flag, f"must be a positive integer, got {value}")
    _check_out(out)
    if math.isnan(drop_margin):  # click's FloatRange lets nan through: no comparison with it is false
        raise ConfigError("--drop-margin", "must be a number in [0, 10], got nan")
    from torchslim._validation import learning_rate

    learning_rate("--lr", lr)
    if study_name is not None and not study_name.strip():
        raise ConfigError("--study", "must be a non-empty name")
    os.environ["TQDM_DISABLE"] = "1"  # one progress line per candidate, not one bar per epoch
    domain = load_domain(domain_path)
    search = AutoSearch(domain, out, trials=trials, timeout=timeout, storage=storage, study_name=study_name,
                        objective=objective, threads=threads, seed=seed, folds=folds,
                        settings=SearchSettings(baseline_epochs=baseline_epochs, max_epochs=max_epochs,
                                                drop_margin=drop_margin, lr=lr),
                        log=_silent if quiet else (lambda m: click.echo(m, err=True)))
    result = search.run()
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    if result.best is None:
        click.echo(f"error: no candidate finished; see {out / 'trials.csv'}", err=True)
        sys.exit(1)
    b = result.best
    for line in front_lines(result.records, b, objective):
        click.echo(line)
    click.echo(f"best: trial {b['number']} ({b['brief']}): {b['metric']} {b['value']:.4f} (baseline "
               f"{b['baseline_value']:.4f}), {b['size_bytes']:,} bytes ({b['compression_ratio']:.1f}x), speed-up "
               f"b64 {b['speedup_batch_64']:.2f}x; {result.trials} candidate{'s' if result.trials != 1 else ''} "
               f"finished")
    click.echo("wrote " + ", ".join(str(out / n) for n in ("best", "best_recipe.yaml", "trials.csv", "report.html")))
    if not result.feasible:
        click.echo(f"no candidate meets every constraint: {result.infeasible}")
        sys.exit(3)


def main() -> None:
    cli(prog_name="torchslim")


if __name__ == "__main__":
    main()
