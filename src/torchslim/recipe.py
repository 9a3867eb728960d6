"""The recipe: a domain, a seed and an ordered list of stages, read from YAML and validated before anything runs.

Each stage is a one-key mapping ``{name: {config}}``; ``name`` selects a registered stage (see ``stages.py``) whose
config model validates the keys one-to-one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torchslim._errors import ConfigError, brief, did_you_mean
from torchslim._yaml import file_problem, parse_yaml, read_yaml
from torchslim.domain import MAX_SEED, Domain, load_domain


@dataclass(frozen=True)
class Stage:
    name: str
    config: Any
    index: int


@dataclass(frozen=True)
class Recipe:
    domain: Domain
    seed: int
    stages: tuple[Stage, ...]
    raw: dict[str, Any]  # the resolved recipe as written (after --set overrides), for the manifest
    source: str | None
    base_dir: str


def apply_overrides(data: dict[str, Any], overrides: list[str], source: str | None = None) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides (values parsed as YAML) to a raw recipe mapping."""
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError("--set", f"expected KEY=VALUE, got {brief(item)}", source)
        parts = key.split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or len(part) > 9 or int(part) >= len(node):
                    raise ConfigError("--set", f"{brief(key)}: no list item {brief(part)}", source)
                part = int(part)
            elif not isinstance(node, dict):
                raise ConfigError("--set", f"{brief(key)}: {brief('.'.join(parts[:depth]))} is not a mapping",
                                  source)
            if last:
                node[part] = parse_yaml(text, source, f"--set {key}")
            else:
                if isinstance(node, dict) and part not in node:
                    node[part] = {}
                node = node[part]
    return data


def load_recipe(path: str | Path, overrides: list[str] = ()) -> Recipe:
    """Read, override and validate a recipe and its domain; every stage config is validated too.

    Args:
        path: the recipe YAML file.
        overrides: ``KEY=VALUE`` strings, as given to ``--set``.
    """
    source = str(path)
    data = read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError("", "a recipe must be a mapping with keys domain, seed, stages", source)
    # ``--set domain.KEY=VALUE`` changes a domain the recipe names by path as it would an inline one
    by_path = isinstance(data.get("domain"), str)
    domain_sets = [o for o in overrides if by_path and o.partition("=")[0].startswith("domain.")]
    data = apply_overrides(data, [o for o in overrides if o not in domain_sets], source)
    if not {"domain", "stages"} & set(data) and {"task", "data", "model"} & set(data):
        raise ConfigError("", "a domain (task, data, model), not a recipe: a recipe names its domain under "
                              "'domain:' and lists 'stages:' (`torchslim auto` searches a domain)", source)
    unknown = sorted(set(data) - {"domain", "seed", "stages"}, key=str)  # a YAML key may be a number
    if unknown:
        key = "null" if unknown[0] is None else unknown[0]  # ``null: 1`` has a key, spelt null
        raise ConfigError(key, "unknown key (expected domain, seed, stages)", source)
    if "domain" not in data:
        raise ConfigError("domain", "required key is missing", source)
    seed = data.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConfigError("seed", "must be a non-negative integer", source)
    if seed > MAX_SEED:
        raise ConfigError("seed", f"must be at most {MAX_SEED} (2**32 - 1)", source)
    base = Path(path).parent
    if isinstance(data["domain"], str) and data["domain"].strip():
        named = Path(data["domain"]).expanduser()
        named = named if named.is_absolute() else base / named
        problem = file_problem(named)
        if problem == "file not found":
            raise ConfigError("domain", f"file not found: {named}", source)
        if problem:  # a directory, a device, a name too long: the recipe's key is where to fix it
            raise ConfigError("domain", f"{problem}: {named}", source)
        if domain_sets:
            named_data = read_yaml(named)
            if not isinstance(named_data, dict):
                raise ConfigError("", "a domain must be a mapping of keys", str(named))
            changed = apply_overrides({"domain": named_data}, domain_sets, source)["domain"]
            domain = load_domain(changed, base_dir=named.parent, source=str(named))
        else:
            domain = load_domain(data["domain"], base_dir=base)
    elif isinstance(data["domain"], dict):
        domain = load_domain(data["domain"], base_dir=base, source=source, prefix="domain")
    else:
        raise ConfigError("domain", "must be a path to a domain file or an inline mapping", source)

    stages = parse_stages(data.get("stages", []), source, task=domain.task)
    return Recipe(domain, seed, stages, data, source, str(base))


def stage_registry(task: str) -> dict[str, Any]:
    """The stages a domain's task can run: a sentence encoder has its own (no labels, no classifier head)."""
    if task == "sentence-embedding":
        from torchslim.text.stages import TEXT_STAGES

        return TEXT_STAGES
    from torchslim.stages import STAGES

    return STAGES


def parse_stages(raw_stages: Any, source: str | None = None, *, task: str = "image-classification"
                 ) -> tuple[Stage, ...]:
    """Validate a recipe's ``stages`` list (one-key mappings ``{name: {config}}``) into Stage objects."""
    STAGES = stage_registry(task)

    if not isinstance(raw_stages, list) or not raw_stages:
        raise ConfigError("stages", "must be a non-empty list of stages", source)
    stages = []
    for i, item in enumerate(raw_stages):
        where = f"stages[{i}]"
        if not isinstance(item, dict) or len(item) != 1:
            raise ConfigError(where, f"must be a one-key mapping such as {{train: {{...}}}}; stages: "
                                     f"{', '.join(STAGES)}", source)
        (name, body), = item.items()
        if name not in STAGES:
            raise ConfigError(f"{where}.{name}", f"unknown stage; {did_you_mean(name, STAGES)}known: "
                                                 f"{', '.join(STAGES)}", source)
        config = STAGES[name].parse(body if body is not None else {}, prefix=f"{where}.{name}", source=source)
        stages.append(Stage(name, config, i))
    if task != "sentence-embedding":
        _check_order(stages, source)
    return tuple(stages)


_INT8_GRAPH = ("static", "dynamic")  # methods whose int8 graph is built from the weights as they are then


def _check_order(stages: list[Stage], source: str | None) -> None:
    """Refuse stages an earlier stage would silently undo or leave without effect: pruning acts on float weights
    and a quantized layer is none, a second quantize stage finds no float layer left, training an int8 model
    changes the weights its int8 graph was built from (that graph would be dropped and the model run in float),
    and magnitude masks cannot follow a structured cut of their layers."""
    from torchslim.prune.config import MagnitudeConfig
    from torchslim.quantize.config import method_of

    quantized = masked = None
    for stage in stages:
        where = f"stages[{stage.index}].{stage.name}"
        if stage.name == "distill" and getattr(stage.config, "student", None) is not None:
            quantized = masked = None  # a new float student takes the model's place
        elif stage.name == "prune" and masked and not isinstance(stage.config.config, MagnitudeConfig):
            raise ConfigError(where, f"removes channels after {masked} masked weights: the masks cannot follow "
                                     f"the cut layers (their zeros would train back); remove channels first, then "
                                     f"mask", source)
        elif quantized is not None:
            first, method = quantized
            if stage.name == "prune":
                raise ConfigError(where, f"comes after {first}, whose quantized layers it cannot prune: prune "
                                         f"before quantizing", source)
            if stage.name == "quantize":
                raise ConfigError(where, f"the model is quantized already ({first}): one quantize stage per "
                                         f"recipe (ignore and overrides choose per layer)", source)
            if stage.name in ("train", "distill") and method in _INT8_GRAPH:
                raise ConfigError(where, f"would train the {method} int8 model of {first}, whose int8 graph is "
                                         f"built from the weights as they were: train before quantizing, or "
                                         f"quantize with method qat to train with int8 in the loop", source)
        elif stage.name == "quantize":
            quantized = (f"stages[{stage.index}].quantize", method_of(stage.config.config))
        if stage.name == "prune" and isinstance(stage.config.config, MagnitudeConfig):
            masked = f"stages[{stage.index}].prune"
