"""MAD-X language adapters in AdapterHub's file layout, read and written without the `adapters` library.

MAD-X (Pfeiffer et al. 2020) language adapters as the paper uses them (§3.1, App. B); the weights' key names and the
invertible adapter are the library's (see docs/design.md for the adapter math).

An AdapterHub adapter directory holds `adapter_config.json` and `pytorch_adapter.bin` (or `adapter.safetensors`).
Its weight keys name the library's modules, e.g. for adapter `de` saved from `BertAdapterModel`:

    bert.encoder.layer.{i}.output.adapters.de.adapter_down.0.weight   →  layers.{i}.adapter_down.0.weight
    bert.invertible_adapters.de.F.0.weight                            →  invertible.F.0.weight

(`roberta.` for XLM-R, `deberta.` for mDeBERTa, no prefix when saved from a bare encoder). Old files use
`layer_text_lang_adapters` / `invertible_lang_adapters` and may carry `adapter_attention.*` keys, which we drop.
Because our modules keep the library's parameter names (fun/adapters.py), loading is a key rename.

We accept exactly what our hooks compute — the Pfeiffer/MAD-X output adapter (`seq_bn`, `seq_bn_inv`, the old
`pfeiffer`, `pfeiffer+inv`) — and refuse every other configuration, and adapters trained for another base model,
with a message that says why. Activations follow the library: configs without a `version` key come from old
adapter-transformers, where "gelu" meant the tanh approximation (HF `gelu_new`) and "gelu_orig" the exact one.

Parity with the library is tested on fixtures it produced (tests/fixtures/make_adapterhub_fixtures.py).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers.activations import ACT2FN

from fun.adapters import AdapterSet
from fun.hub import HubError, explain
from fun.model import ADAPTER_CONFIG, ADAPTER_WEIGHTS

CONFIG_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_NAME = "adapter_config.json", "pytorch_adapter.bin", "adapter.safetensors"
MODEL_PREFIX = {"bert": "bert", "xlm-roberta": "roberta", "roberta": "roberta", "deberta-v2": "deberta"}
ADAPTER_MODEL_CLASS = {"bert": "BertAdapterModel", "xlm-roberta": "XLMRobertaAdapterModel",
                       "roberta": "RobertaAdapterModel", "deberta-v2": "DebertaV2AdapterModel"}
LEGACY_KEYS = {"layer_text_lang_adapters": "adapters", "attention_text_lang_adapters": "adapters",
               "layer_text_task_adapters": "adapters", "attention_text_task_adapters": "adapters",
               "invertible_lang_adapters": "invertible_adapters"}
LEGACY_ACTIVATIONS = {"gelu": "gelu_new", "gelu_orig": "gelu"}  # adapter-transformers before config versions
ACTIVATION_ALIASES = {"leakyrelu": "leaky_relu"}                 # library name → transformers ACT2FN key
LAYER_KEY = re.compile(r"encoder\.layer\.(\d+)\.output\.adapters\.([^.]+)\.(adapter_down\.0|adapter_up)\.(weight|bias)")
INVERTIBLE_KEY = re.compile(r"invertible_adapters\.([^.]+)\.([FG]\.[02])\.(weight|bias)")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")

# The Pfeiffer / MAD-X adapter: `out = LN(h + f(LN(h + x)) + x)`. These are the `adapters` BnConfig
# fields that define it; any other value is a different architecture that our hooks do not compute.
PFEIFFER = dict(mh_adapter=False, output_adapter=True, original_ln_before=True, original_ln_after=True,
                residual_before_ln=True, adapter_residual_before_ln=False, ln_before=False, ln_after=False,
                scaling=1.0, use_gating=False, is_parallel=False, phm_layer=False, cross_adapter=False,
                stochastic_depth=0.0, leave_out=[])
# BnConfig defaults of the optional fields (what the library assumes when an old config omits a key).
BN_DEFAULTS = dict(original_ln_before=False, original_ln_after=True, residual_before_ln=True,
                   adapter_residual_before_ln=False, ln_before=False, ln_after=False, scaling=1.0, use_gating=False,
                   is_parallel=False, phm_layer=False, cross_adapter=False, stochastic_depth=0.0, leave_out=[],
                   dropout=0.0, inv_adapter=None, inv_adapter_reduction_factor=None)
PRESETS = {"pfeiffer": dict(PFEIFFER, reduction_factor=16, non_linearity="relu"),
           "pfeiffer+inv": dict(PFEIFFER, reduction_factor=16, non_linearity="relu", inv_adapter="nice",
                                inv_adapter_reduction_factor=2)}
PRESETS.update(seq_bn=PRESETS["pfeiffer"], seq_bn_inv=PRESETS["pfeiffer+inv"])


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


# --- reading ----------------------------------------------------------------------------------------------------

def _factor(value, name: str, where: str) -> int:
    """Reduction factors: one number (or a per-layer mapping whose values all agree) that is a whole number."""
    if isinstance(value, dict):
        values = set(value.values())
        if len(values) != 1:
            raise ValueError(f"{where}: per-layer {name} {value} is not supported (one bottleneck size for all layers)")
        value = values.pop()
    if not isinstance(value, (int, float)) or value <= 0 or float(value) != int(value):
        raise ValueError(f"{where}: {name} {value!r} is not supported; expected a positive whole number")
    return int(value)


def parse_adapterhub_config(meta: dict, where: str) -> dict:
    """AdapterHub's adapter_config.json → {reduction_factor, activation, invertible, inv_reduction_factor}.

    Accepts both layouts: old adapter-transformers (no `version`; `config` with original_ln_before, …, inv_adapter)
    and the `adapters` library's (`version: adapters.x`, `config` with `architecture: bottleneck`), or a preset name.
    """
    config = meta.get("config")
    if isinstance(config, str):
        if config not in PRESETS:
            raise ValueError(f"{where}: adapter config '{config}' is not supported; only the MAD-X adapter is "
                             f"({', '.join(PRESETS)})")
        config = PRESETS[config]
    if not isinstance(config, dict):
        raise ValueError(f"{where}: {CONFIG_NAME} has no adapter `config`; is this an AdapterHub adapter directory?")
    architecture = config.get("architecture")  # the library writes none for bottleneck adapters
    if architecture not in (None, "bottleneck"):
        raise ValueError(f"{where}: a '{architecture}' adapter; only bottleneck adapters (seq_bn / pfeiffer) "
                         "are supported")
    missing = [k for k in ("mh_adapter", "output_adapter", "reduction_factor", "non_linearity") if k not in config]
    if missing:
        raise ValueError(f"{where}: adapter config lacks {', '.join(missing)}; not a bottleneck adapter config")
    config = dict(BN_DEFAULTS, **config)
    if config["mh_adapter"]:
        raise ValueError(f"{where}: adapters after the attention block too (mh_adapter: Houlsby / double_seq_bn) are "
                         "not supported; only the MAD-X output adapter (seq_bn / pfeiffer) is")
    wrong = {k: config[k] for k, v in PFEIFFER.items() if k != "mh_adapter" and config[k] != v}
    if wrong:
        expected = ", ".join(f"{k}={PFEIFFER[k]}" for k in wrong)
        raise ValueError(f"{where}: unsupported adapter config {wrong}; the MAD-X adapter (seq_bn / pfeiffer) has "
                         f"{expected}")
    if config["dropout"]:
        warn(f"{where}: adapter dropout {config['dropout']} is ignored (our adapters have none; eval is unaffected)")
    activation = str(config["non_linearity"]).lower()
    if "version" not in meta:  # written by adapter-transformers before configs were versioned
        activation = LEGACY_ACTIVATIONS.get(activation, activation)
    activation = ACTIVATION_ALIASES.get(activation, activation)
    if activation not in ACT2FN:
        raise ValueError(f"{where}: non_linearity '{config['non_linearity']}' is not a transformers activation")
    inv = config["inv_adapter"]
    if inv not in (None, "nice"):
        raise ValueError(f"{where}: invertible adapter '{inv}' is not supported; only 'nice' (MAD-X) is")
    return dict(reduction_factor=_factor(config["reduction_factor"], "reduction_factor", where),
                activation=activation, invertible=inv == "nice",
                inv_reduction_factor=_factor(config["inv_adapter_reduction_factor"] or 2,
                                             "inv_adapter_reduction_factor", where))


def convert_adapterhub_weights(state: dict[str, torch.Tensor], where: str) -> tuple[str, dict[str, torch.Tensor]]:
    """AdapterHub keys → (adapter name, AdapterSet state dict): strip the model prefix, rename legacy names,
    drop `adapter_attention.*`; any other key is an architecture we do not have, so it is an error."""
    names, out, unknown = set(), {}, []
    for key, value in state.items():
        k = key
        for old, new in LEGACY_KEYS.items():
            k = k.replace(old, new)
        if "adapter_attention" in k:  # legacy attention weights over adapters (fusion), unused by one adapter
            continue
        head, _, rest = k.partition(".")
        if head in ("bert", "roberta", "deberta"):
            k = rest
        if m := LAYER_KEY.fullmatch(k):
            names.add(m[2])
            out[f"layers.{m[1]}.{m[3]}.{m[4]}"] = value
        elif m := INVERTIBLE_KEY.fullmatch(k):
            names.add(m[1])
            out[f"invertible.{m[2]}.{m[3]}"] = value
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(f"{where}: unexpected weights {unknown[:3]}{' …' if len(unknown) > 3 else ''}; only MAD-X "
                         "output adapters and the invertible adapter are supported")
    if len(names) != 1:
        raise ValueError(f"{where}: expected the weights of one adapter, found {sorted(names) or 'none'}")
    return names.pop(), out


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    if (directory / SAFE_WEIGHTS_NAME).exists():
        return load_file(str(directory / SAFE_WEIGHTS_NAME))
    if (directory / WEIGHTS_NAME).exists():
        return torch.load(directory / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    raise ValueError(f"{directory}: no {WEIGHTS_NAME} or {SAFE_WEIGHTS_NAME} beside {CONFIG_NAME}")


def check_base_model(meta: dict, encoder: nn.Module, num_layers: int, hidden: int, where: str) -> None:
    """Refuse an adapter trained for another base model: its hidden size and layer count must be the encoder's."""
    cfg = encoder.config
    trained_for = f" (trained for {meta['model_name']})" if meta.get("model_name") else ""
    if hidden != cfg.hidden_size or meta.get("hidden_size", hidden) != hidden:
        raise ValueError(f"{where}: adapter for hidden size {meta.get('hidden_size', hidden)}{trained_for}, but the "
                         f"encoder has {cfg.hidden_size}; use the adapter of this base model")
    if num_layers != cfg.num_hidden_layers:
        raise ValueError(f"{where}: adapter for {num_layers} layers{trained_for}, but the encoder has "
                         f"{cfg.num_hidden_layers}; use the adapter of this base model")
    model_type = meta.get("model_type")
    if model_type and model_type != cfg.model_type:
        raise ValueError(f"{where}: adapter for a '{model_type}' model{trained_for}, but the encoder is "
                         f"'{cfg.model_type}'; use the adapter of this base model")
    name = str(meta.get("model_name") or "")
    ours = str(getattr(cfg, "_name_or_path", "") or "")
    if name and ours and Path(name).name != Path(ours).name:
        warn(f"{where}: adapter trained for {name}, the encoder is {ours} "
             "(same type and size; check it is the same model)")


def load_adapterhub(directory: str | Path, encoder: nn.Module) -> AdapterSet:
    """An AdapterHub adapter directory → an AdapterSet for `encoder` (weights loaded, strict)."""
    directory = Path(directory)
    meta = json.loads((directory / CONFIG_NAME).read_text())
    arch = parse_adapterhub_config(meta, str(directory))
    name, state = convert_adapterhub_weights(read_weights(directory), str(directory))
    layers = sorted({int(k.split(".")[1]) for k in state if k.startswith("layers.")})
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"{directory}: adapters in layers {layers}; expected one in every layer 0..L-1")
    down = state["layers.0.adapter_down.0.weight"]  # (bottleneck, hidden)
    check_base_model(meta, encoder, len(layers), down.shape[1], str(directory))
    if down.shape[0] != down.shape[1] // arch["reduction_factor"]:
        raise ValueError(f"{directory}: bottleneck {down.shape[0]} does not match reduction_factor "
                         f"{arch['reduction_factor']} for hidden size {down.shape[1]}")
    has_inv = any(k.startswith("invertible.") for k in state)
    if has_inv != arch["invertible"]:
        warn(f"{directory}: config says invertible adapter {'yes' if arch['invertible'] else 'no'}, the weights "
             f"{'have' if has_inv else 'have none'}; following the weights")
    adapter = AdapterSet(down.shape[1], len(layers), arch["reduction_factor"], arch["activation"], invertible=has_inv,
                         inv_reduction_factor=arch["inv_reduction_factor"])
    try:
        adapter.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{directory}: adapter weights do not fit the config (adapter '{name}'): "
                         f"{str(err).splitlines()[0]}") from None
    return adapter


def load_ours(directory: Path, encoder: nn.Module) -> AdapterSet:
    """A language adapter trained by `train.py --task mlm` (its run's best/ or final/: our safetensors + JSON)."""
    meta = json.loads((directory / ADAPTER_CONFIG).read_text())
    if meta.get("task") == "mlm" and not meta.get("task_adapter"):
        raise ValueError(f"{directory}: holds an MLM head fitted without a language adapter (--mlm-train head); pass "
                         "it as --mlm-head to train language adapters against it, and a language adapter here")
    if meta.get("task") != "mlm" or not meta.get("task_adapter"):
        raise ValueError(f"{directory}: holds a task adapter for '{meta.get('task')}', not a language adapter; "
                         "train one with `train.py --task mlm` or pass an AdapterHub adapter directory")
    config = meta["task_adapter"]
    check_base_model(dict(hidden_size=config["hidden_size"], model_name=meta.get("model")), encoder,
                     config["num_layers"], config["hidden_size"], str(directory))
    adapter = AdapterSet(**config)
    tensors = load_file(str(directory / ADAPTER_WEIGHTS))
    adapter.load_state_dict({k[len("task."):]: v for k, v in tensors.items() if k.startswith("task.")})
    return adapter


def resolve_directory(path_or_id: str) -> Path:
    """A local directory as is; an `owner/name` Hub id downloaded with huggingface_hub (cached)."""
    path = Path(path_or_id)
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"{path_or_id}: is a file; pass the directory holding {CONFIG_NAME} and {WEIGHTS_NAME}")
        if not (path / CONFIG_NAME).exists():
            raise ValueError(f"{path_or_id}: no {CONFIG_NAME}; pass an AdapterHub adapter directory or a "
                             "`train.py --task mlm` run's best/ directory")
        return path
    if HUB_ID.fullmatch(path_or_id) and not path_or_id.startswith((".", "/")):
        from huggingface_hub import snapshot_download
        try:
            files = [CONFIG_NAME, WEIGHTS_NAME, SAFE_WEIGHTS_NAME]
            return Path(snapshot_download(repo_id=path_or_id, allow_patterns=files))
        except Exception as err:  # offline, unknown id, no access: the exception type varies by huggingface_hub version
            raise HubError(f"{path_or_id}: not a local directory, and downloading it from the Hugging Face Hub "
                           f"failed: {explain(err)}") from None
    raise ValueError(f"{path_or_id}: no such directory. Pass a local adapter directory "
                     f"({CONFIG_NAME} + {WEIGHTS_NAME}), "
                     "a `train.py --task mlm` run's best/, or a Hub id such as "
                     "AdapterHub/bert-base-multilingual-cased-de-wiki_pfeiffer")


def load_lang_adapter(path_or_id: str, encoder: nn.Module) -> AdapterSet:
    """Language adapter from an AdapterHub directory or Hub id, or from our own MLM run directory."""
    directory = resolve_directory(str(path_or_id))
    meta = json.loads((directory / CONFIG_NAME).read_text())
    return load_ours(directory, encoder) if "task_adapter" in meta else load_adapterhub(directory, encoder)


def load_lang_adapter_arg(spec: str, encoder: nn.Module) -> AdapterSet:
    """A language adapter given as `DIR` or `LANG=DIR` (the language code names it; the weights decide)."""
    path = spec
    if "=" in spec and not Path(spec).exists():
        lang, _, path = spec.partition("=")
        if not re.fullmatch(r"[A-Za-z]{2,3}([_-][A-Za-z0-9]+)?", lang) or not path:
            raise ValueError(f"{spec}: expected DIR or LANG=DIR, e.g. en=/path/to/adapter")
    adapter = load_lang_adapter(path, encoder)
    c = adapter.config
    print(f"language adapter {spec}: reduction factor {c['reduction_factor']}, {c['activation']}, "
          f"{'with' if c['invertible'] else 'without'} invertible adapter")
    return adapter


# --- writing ----------------------------------------------------------------------------------------------------

def adapterhub_state_dict(adapter: AdapterSet, name: str, model_type: str) -> dict[str, torch.Tensor]:
    """Our AdapterSet keys → the library's, with the model prefix of `<Model>AdapterModel` (e.g. `bert.`)."""
    prefix = MODEL_PREFIX[model_type] + "."
    state = {}
    for k, v in adapter.state_dict().items():
        if k.startswith("layers."):
            _, i, param = k.split(".", 2)
            state[f"{prefix}encoder.layer.{i}.output.adapters.{name}.{param}"] = v
        else:
            state[f"{prefix}invertible_adapters.{name}.{k[len('invertible.'):]}"] = v
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}


def save_adapterhub(adapter: AdapterSet, directory: str | Path, name: str, model_name: str, model_type: str) -> Path:
    """Write `adapter` as AdapterHub does (`model.save_adapter`): adapter_config.json + pytorch_adapter.bin, so that
    `model.load_adapter(directory)` of the `adapters` library loads it into `<Model>AdapterModel` or a bare encoder."""
    if model_type not in MODEL_PREFIX:
        raise ValueError(f"model type '{model_type}': AdapterHub export supports {', '.join(MODEL_PREFIX)}")
    c = adapter.config
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = dict(PFEIFFER, reduction_factor=c["reduction_factor"],
                  non_linearity=c["activation"], init_weights="bert", dropout=0.0,
                  inv_adapter="nice" if c["invertible"] else None,
                  inv_adapter_reduction_factor=c["inv_reduction_factor"] if c["invertible"] else None)
    # `version` marks the activation name as a transformers one (unversioned configs read "gelu" as gelu_new)
    meta = dict(config=config, hidden_size=c["hidden_size"], model_class=ADAPTER_MODEL_CLASS[model_type],
                model_name=model_name, model_type=model_type, name=name,
                type="text_lang" if c["invertible"] else "text_task", version="fun")
    torch.save(adapterhub_state_dict(adapter, name, model_type), directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=2, sort_keys=True))
    return directory
