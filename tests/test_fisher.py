"""tr(F) (fun/fisher.py, paper Eq. 1 / Algorithm 2), the FUN schedule, tr(F) logging and the fisher.py CLI.

Parity against slow references: per-example tr(F) from `vmap(grad)` equals a plain per-example autograd loop;
`batch` equals Algorithm 2 written out with `.backward()`; `exact` equals the mean of many `sample` draws.
Tiny encoders are built in code (tests/tiny.py); everything runs offline on one CPU thread in seconds.
"""

import contextlib
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from fun.adapters import AdapterSet
from fun.fisher import choose_labels, fisher_trace
from fun.heads import ClassificationHead, MultipleChoiceHead, QuestionAnsweringHead
from fun.lora import TARGETS as LORA_TARGETS
from fun.lora import LoraSet
from fun.model import AdapterModel, freeze
from fun.schedules import Selection, select_max_fisher, set_trainable
from tiny import tiny_encoder

HIDDEN, LAYERS, LABELS, CHOICES, SEQ = 32, 4, 3, 2, 10


def make_model(kind: str, head: str, seed: int = 0, lora: bool = False) -> AdapterModel:
    """Tiny encoder + task adapter (rf 4 → bottleneck 8; or LoRA of rank 4 on all six Linear targets) + head; the
    GU-like state: top two adapters trainable. LoRA's B is drawn at random (as after training, so that A has a
    gradient too; at init B = 0)."""
    encoder = tiny_encoder(kind, hidden=HIDDEN, layers=LAYERS)
    torch.manual_seed(seed)
    heads = {"cls": lambda: ClassificationHead(HIDDEN, LABELS), "mc": lambda: MultipleChoiceHead(HIDDEN),
             "qa": lambda: QuestionAnsweringHead(HIDDEN)}
    head_module = heads[head]()
    if lora:
        task = LoraSet(HIDDEN, LAYERS, 2 * HIDDEN, rank=4, alpha=8, targets=list(LORA_TARGETS))
        for name, p in task.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.2)
    else:
        task = AdapterSet(HIDDEN, LAYERS, reduction_factor=4)
    model = AdapterModel(encoder, head_module, task)
    freeze(encoder)
    set_trainable(model.task_layers, {LAYERS - 2, LAYERS - 1})
    return model


def make_batch(kind: str, head: str, size: int, seed: int) -> dict[str, torch.Tensor]:
    """A collated batch with right padding of varying length (so the attention mask matters)."""
    g = torch.Generator().manual_seed(seed)
    shape = (size, CHOICES, SEQ) if head == "mc" else (size, SEQ)
    ids = torch.randint(5, 100, shape, generator=g)
    lengths = torch.randint(SEQ // 2, SEQ + 1, shape[:-1], generator=g)
    mask = (torch.arange(SEQ) < lengths[..., None]).long()
    batch = dict(input_ids=ids * mask, attention_mask=mask)
    if kind == "bert":
        batch["token_type_ids"] = (torch.arange(SEQ) >= SEQ // 2).long().expand(shape) * mask
    num_outcomes = {"cls": LABELS, "mc": CHOICES, "qa": SEQ // 2}[head]
    batch["labels"] = torch.randint(num_outcomes, (size, 2) if head == "qa" else (size,), generator=g)
    return batch


@contextlib.contextmanager
def all_adapters_trainable(model: AdapterModel):
    """For the plain-autograd references: every task adapter requires grad, eval mode; restored afterwards.
    (Not a deepcopy: the adapter hooks' closures would still point at the original model's adapters.)"""
    layers = [list(layer.parameters()) for layer in model.task_adapter.layers]
    saved = [p.requires_grad for p in sum(layers, [])]
    model.eval()
    for p in sum(layers, []):
        p.requires_grad_(True)
    try:
        yield layers
    finally:
        for p, flag in zip(sum(layers, []), saved):
            p.requires_grad_(flag)
            p.grad = None


def loop_fisher(model, batches, labels, seed):
    """Eq. 1 by a plain per-example loop: one forward + torch.autograd.grad per example (and per label for exact)."""
    g = torch.Generator().manual_seed(seed)
    total, count = torch.zeros(LAYERS, dtype=torch.float64), 0
    with all_adapters_trainable(model) as layers:
        for batch in batches:
            size = batch["input_ids"].shape[0]
            gold = batch["labels"].reshape(size, -1)  # (B, H)
            uniform = torch.rand(*gold.shape, generator=g)  # the same draws fisher_trace makes from the same seed
            for n in range(size):
                logp = torch.log_softmax(model({k: v[n:n + 1] for k, v in batch.items() if k != "labels"}).float(), -1)[0]
                if labels == "exact":  # Σ_h Σ_k p_hk ||∇ log p_hk||²
                    targets = [(logp[h, k], logp[h, k].exp().item())
                               for h in range(logp.shape[0]) for k in range(logp.shape[1])]
                else:
                    y = choose_labels(logp, labels, uniform[n], gold[n])
                    targets = [(sum(logp[h, y[h]] for h in range(len(y))), 1.0)]
                for target, weight in targets:
                    grads = iter(torch.autograd.grad(target, sum(layers, []), retain_graph=True))
                    for i, params in enumerate(layers):
                        total[i] += weight * sum(next(grads).double().pow(2).sum() for _ in params)
                count += 1
    return (total / count).tolist()


def batch_formula(model, batches, labels, seed):
    """Algorithm 2 written out: loss = mean NLL of the batch; loss.backward(); Σ p.grad² / |b|; mean over batches."""
    g = torch.Generator().manual_seed(seed)
    values = []
    with all_adapters_trainable(model) as layers:
        for batch in batches:
            size = batch["input_ids"].shape[0]
            gold = batch["labels"].reshape(size, -1)
            uniform = torch.rand(*gold.shape, generator=g)
            logp = torch.log_softmax(model({k: v for k, v in batch.items() if k != "labels"}).float(), -1)  # (B, H, K)
            y = choose_labels(logp, labels, uniform, gold)
            loss = -logp.gather(-1, y[..., None]).sum((-1, -2)).mean()
            model.zero_grad(set_to_none=True)
            loss.backward()
            values.append([sum(p.grad.double().pow(2).sum() for p in params).item() / size for params in layers])
    return torch.tensor(values).mean(0).tolist()


def as_list(values: dict[int, float]) -> list[float]:
    assert sorted(values) == list(range(LAYERS))
    return [values[i] for i in range(LAYERS)]


# --- parity with a plain per-example autograd loop ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("head", ["cls", "mc", "qa"])
@pytest.mark.parametrize("labels", ["sample", "exact", "argmax", "true"])
def test_per_sample_matches_per_example_loop(kind, head, labels):
    model = make_model(kind, head)
    batches = [make_batch(kind, head, 5, seed=1), make_batch(kind, head, 3, seed=2)]  # unequal: mean over examples
    got = fisher_trace(model, batches, labels=labels, generator=torch.Generator().manual_seed(7))
    want = loop_fisher(model, batches, labels, seed=7)
    assert all(v > 0 for v in want)
    torch.testing.assert_close(torch.tensor(as_list(got)), torch.tensor(want), rtol=1e-4, atol=0)


@pytest.mark.parametrize("kind", ["bert", "xlmr", "deberta"])
@pytest.mark.parametrize("head", ["cls", "mc", "qa"])
@pytest.mark.parametrize("labels", ["sample", "exact"])
def test_lora_per_sample_matches_per_example_loop(kind, head, labels):
    """The same fisher_trace on LoRA: tr(F)_i sums over layer i's LoRA modules (A and B of every target)."""
    model = make_model(kind, head, lora=True)
    assert [len(list(layer.parameters())) for layer in model.task_layers] == [2 * len(LORA_TARGETS)] * LAYERS
    batches = [make_batch(kind, head, 5, seed=1), make_batch(kind, head, 3, seed=2)]
    got = fisher_trace(model, batches, labels=labels, generator=torch.Generator().manual_seed(7))
    want = loop_fisher(model, batches, labels, seed=7)
    assert all(v > 0 for v in want)
    torch.testing.assert_close(torch.tensor(as_list(got)), torch.tensor(want), rtol=1e-4, atol=0)


def test_lora_batch_estimator_is_algorithm_2():
    model = make_model("bert", "cls", lora=True)
    batches = [make_batch("bert", "cls", 6, seed=4), make_batch("bert", "cls", 4, seed=5)]
    got = fisher_trace(model, batches, estimator="batch", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.tensor(as_list(got)), torch.tensor(batch_formula(model, batches, "sample", 3)),
                               rtol=1e-4, atol=0)


def test_mdeberta_smoke():
    """mDeBERTa-v2 builds its own relative-position attention mask; vmap must go through it as well."""
    model = make_model("deberta", "cls")
    batches = [make_batch("deberta", "cls", 4, seed=3)]
    got = fisher_trace(model, batches, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(torch.tensor(as_list(got)), torch.tensor(loop_fisher(model, batches, "sample", 0)),
                               rtol=1e-4, atol=0)


@pytest.mark.parametrize("labels", ["sample", "true"])
def test_batch_estimator_is_algorithm_2(labels):
    model = make_model("bert", "cls")
    batches = [make_batch("bert", "cls", 6, seed=4), make_batch("bert", "cls", 4, seed=5)]
    got = fisher_trace(model, batches, labels=labels, estimator="batch", generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(torch.tensor(as_list(got)), torch.tensor(batch_formula(model, batches, labels, 3)),
                               rtol=1e-4, atol=0)


@pytest.mark.parametrize("labels", ["sample", "exact"])
def test_chunked_equals_unchunked(labels):
    model = make_model("xlmr", "qa")
    batches = [make_batch("xlmr", "qa", 7, seed=6)]
    full = fisher_trace(model, batches, labels=labels, generator=torch.Generator().manual_seed(1))
    chunked = fisher_trace(model, batches, labels=labels, generator=torch.Generator().manual_seed(1), chunk_size=3)
    torch.testing.assert_close(torch.tensor(as_list(chunked)), torch.tensor(as_list(full)), rtol=1e-6, atol=0)


# --- exact = E_y[sample] -----------------------------------------------------------------------------------

def assert_mean_matches(draws: list[list[float]], exact: list[float], max_stderr: float = 0.05, sigmas: float = 4.0):
    draws = torch.tensor(draws, dtype=torch.float64)  # (draws, L)
    mean, stderr = draws.mean(0), draws.std(0) / math.sqrt(len(draws))
    assert (stderr < max_stderr * mean).all(), "too few draws for a meaningful check"
    assert ((mean - torch.tensor(exact, dtype=torch.float64)).abs() <= sigmas * stderr).all(), (mean, stderr, exact)


@pytest.mark.parametrize("head", ["cls", "qa"])  # qa: H=2 heads, where the cross terms must vanish
def test_exact_is_expectation_of_sample(head):
    # A sharper head than at init makes p(y|x) unequal across outcomes (e.g. 0.06/0.71/0.23), so a wrong
    # weighting of the labels would show; much sharper and rare labels make the draws heavy-tailed.
    model = make_model("bert", head)
    with torch.no_grad():
        model.head.head[-1].weight.mul_(3.0)
    batch = make_batch("bert", head, 4, seed=8)
    repeated = [{k: v.repeat_interleave(64, 0) for k, v in batch.items()}]  # 64 label draws per example per call
    exact = as_list(fisher_trace(model, [batch], labels="exact"))
    draws = [as_list(fisher_trace(model, repeated, generator=torch.Generator().manual_seed(s))) for s in range(12)]
    assert_mean_matches(draws, exact)


def test_batch_exact_is_expectation_of_batch_sample():
    model = make_model("bert", "cls")
    with torch.no_grad():
        model.head.head[-1].weight.mul_(3.0)
    batches = [make_batch("bert", "cls", 4, seed=9)]
    exact = as_list(fisher_trace(model, batches, labels="exact", estimator="batch"))
    # one draw of Algorithm 2 varies a lot (relative std ≈ 0.6 here): 10 calls × 10 draws of the batch
    draws = [as_list(fisher_trace(model, batches * 10, estimator="batch", generator=torch.Generator().manual_seed(s)))
             for s in range(10)]
    assert_mean_matches(draws, exact, max_stderr=0.1)


# --- measurement never mutates training ----------------------------------------------------------------------

def test_fisher_trace_leaves_model_and_rng_alone():
    model = make_model("bert", "cls").train()
    model.head.eval()  # a per-module mode, which a blanket model.train(previous) would overwrite
    model.task_adapter.layers[3].adapter_up.weight.grad = torch.ones(HIDDEN, HIDDEN // 4)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    requires = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    rng = torch.get_rng_state()
    generator = torch.Generator().manual_seed(5)
    for labels, estimator in (("sample", "per-sample"), ("exact", "per-sample"), ("sample", "batch")):
        fisher_trace(model, [make_batch("bert", "cls", 4, seed=10)], labels=labels, estimator=estimator,
                     generator=generator)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) and p.requires_grad == requires[n], n
        assert p.grad is None or n == "adapters.task.layers.3.adapter_up.weight", n
    assert torch.equal(model.task_adapter.layers[3].adapter_up.weight.grad, torch.ones(HIDDEN, HIDDEN // 4))
    assert not torch.equal(generator.get_state(), torch.Generator().manual_seed(5).get_state())  # its own RNG moved


def test_autocast_within_one_percent_of_fp32():
    model = make_model("xlmr", "qa")
    batches = [make_batch("xlmr", "qa", 6, seed=11)]
    fp32 = as_list(fisher_trace(model, batches, labels="exact"))
    bf16 = as_list(fisher_trace(model, batches, labels="exact", autocast_dtype=torch.bfloat16))
    torch.testing.assert_close(torch.tensor(bf16), torch.tensor(fp32), rtol=1e-2, atol=0)


def test_bad_arguments():
    model = make_model("bert", "cls")
    batch = make_batch("bert", "cls", 2, seed=0)
    with pytest.raises(ValueError, match="labels"):
        fisher_trace(model, [batch], labels="gold")
    with pytest.raises(ValueError, match="estimator"):
        fisher_trace(model, [batch], estimator="diag")
    with pytest.raises(ValueError, match="gold labels"):
        fisher_trace(model, [{k: v for k, v in batch.items() if k != "labels"}], labels="true")
    unlabelled = fisher_trace(model, [{k: v for k, v in batch.items() if k != "labels"}], labels="argmax")
    assert unlabelled == fisher_trace(model, [batch], labels="argmax")


# --- FUN: SELECT() = argmax tr(F) over the frozen adapters ---------------------------------------------------

def test_select_max_fisher():
    scores = {0: 0.5, 1: 3.0, 2: 2.0, 3: 9.0, 4: 2.0}
    assert select_max_fisher(Selection(frozen=(0, 1, 2, 4), step=5, scores=scores)) == [1]  # 3 is trainable already
    assert select_max_fisher(Selection(frozen=(0, 2, 4), step=5, scores=scores)) == [4]     # tie → higher layer
    assert select_max_fisher(Selection(frozen=(0, 1, 2, 4), step=5, per_step=2, scores=scores)) == [1, 4]


def train_args(model_dir, files, out, *extra):
    train_file, dev_file = files
    return ["--task", "xnli", "--model", str(model_dir), "--train-file", str(train_file), "--dev-file", str(dev_file),
            "--output-dir", str(out), "--max-steps", "8", "--batch-size", "8", "--k", "2", "--lr", "1e-3",
            "--eval-every", "4", "--log-every", "1", "--threads", "1", "--no-progress", *extra]


@pytest.fixture(scope="module")
def runs(tiny_bert_dir, nli_files, tmp_path_factory):
    """Tiny runs shared by the tests below: FUN, and GU with and without tr(F) logging."""
    import train
    root = tmp_path_factory.mktemp("runs")
    dirs = dict(fun=root / "fun", gu=root / "gu", gu_logged=root / "gu-logged")
    assert train.main(train_args(tiny_bert_dir, nli_files, dirs["fun"], "--schedule", "fun", "--fisher-batches", "2")) == 0
    assert train.main(train_args(tiny_bert_dir, nli_files, dirs["gu"], "--schedule", "gu")) == 0
    assert train.main(train_args(tiny_bert_dir, nli_files, dirs["gu_logged"], "--schedule", "gu", "--fisher-every", "2",
                                 "--fisher-log-batches", "2", "--fisher-batch-size", "4")) == 0
    return dirs


def read_log(run) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_fun_run_unfreezes_argmax_of_recorded_fisher(runs):
    events = json.loads((runs["fun"] / "schedule.json").read_text())
    assert [e["step"] for e in events] == [2, 4, 6]
    frozen = set(range(LAYERS - 1))  # the top adapter starts trainable
    for event in events:
        fisher = {int(j): v for j, v in event["fisher"].items()}
        assert sorted(fisher) == list(range(LAYERS)) and all(v > 0 for v in fisher.values())
        assert event["layers"] == [max(frozen, key=lambda j: (fisher[j], j))]
        frozen -= set(event["layers"])
    assert not frozen


def test_fisher_logging_leaves_training_bit_identical(runs):
    plain, logged = read_log(runs["gu"]), read_log(runs["gu_logged"])
    assert [r["loss"] for r in plain] == [r["loss"] for r in logged]
    assert [r["step"] for r in logged if "fisher" in r] == [2, 4, 6, 8]
    for r in (r for r in logged if "fisher" in r):
        fisher = {int(j): v for j, v in r["fisher"].items()}
        assert r["fisher_avg"] == pytest.approx(sum(fisher[j] for j in r["trainable"]) / len(r["trainable"]))
    a, b = load_file(str(runs["gu"] / "final" / "adapter.safetensors")), load_file(str(runs["gu_logged"] / "final" / "adapter.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --- fisher.py CLI ---------------------------------------------------------------------------------------------

def test_cli_plot(runs, tmp_path):
    import fisher
    assert fisher.main(["plot", str(runs["gu_logged"]), str(runs["fun"]), "--out", str(tmp_path), "--window", "2"]) == 0
    for name in ("fisher_curves.png", "fisher_dev.png", "schedules.png"):
        assert (tmp_path / name).stat().st_size > 5_000, name


def test_plot_lines_name_what_differs_and_a_lora():
    """One line per group of runs that differ only in their seed; a LoRA run's line says so even when every run is
    one (the LoRA benchmark's own plots), and a config from before `adapter` existed is a bottleneck run."""
    from fisher import group_runs

    def run(schedule, seed, **config):
        return {"config": dict(task="xnli", model="models/e5", schedule=schedule, seed=seed, **config)}

    lora = [run(s, seed, adapter="lora") for s in ("standard", "fun") for seed in (1, 2)]
    assert {k: len(v) for k, v in group_runs(lora).items()} == {"standard-lora": 2, "fun-lora": 2}
    mixed = group_runs(lora[:2] + [run("standard", 1), run("standard", 2, adapter="bottleneck")])
    assert {k: len(v) for k, v in mixed.items()} == {"standard-lora": 2, "standard": 2}
    xcopa = {"config": dict(run("gu", 1)["config"], task="xcopa")}
    assert list(group_runs([run("gu", 1), xcopa])) == ["xnli", "xcopa"]  # one schedule, two tasks: named by task


def test_cli_compute(runs, tiny_bert_dir, nli_files, tmp_path, capsys):
    import fisher
    out = tmp_path / "fisher.json"
    assert fisher.main(["compute", "--adapter", str(runs["fun"] / "final"), "--model", str(tiny_bert_dir),
                        "--task", "xnli", "--data", str(nli_files[0]), "--batches", "2", "--batch-size", "4",
                        "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert sorted(map(int, result["fisher"])) == list(range(LAYERS)) and all(v > 0 for v in result["fisher"].values())
    assert result["examples"] == 8 and "tr(F)" in capsys.readouterr().out


def test_cli_usage_errors(tmp_path, capsys):
    import fisher
    assert fisher.main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path)]) == 2
    assert fisher.main(["compute", "--adapter", str(tmp_path), "--data", str(tmp_path / "x.jsonl")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err)


def test_sdpa_model_gives_the_eager_fisher_and_keeps_sdpa():
    """tr(F) switches an SDPA encoder to eager attention while it runs (vmap), with the same numbers, and back."""
    batches = [make_batch("bert", "cls", 4, seed=s) for s in (1, 2)]
    eager = fisher_trace(make_model("bert", "cls"), batches, generator=torch.Generator().manual_seed(3))
    model = make_model("bert", "cls")
    model.encoder.set_attn_implementation("sdpa")
    sdpa = fisher_trace(model, batches, generator=torch.Generator().manual_seed(3))
    assert sdpa == eager
    assert model.encoder.config._attn_implementation == "sdpa"
