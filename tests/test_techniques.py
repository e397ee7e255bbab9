"""Training-only techniques compose with any variant, train, and are proven per run to leave the artifact and
inference unchanged; a technique that changes either is refused, naming the difference."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli_errors import assert_one_line_error

from conftest import REPO, harness_cli, harness_main, write_budget
from harness.errors import UserError
from harness.metric import ScoredModel
from harness.registry import get_variant
from harness.techniques import TechniqueStack, known_technique_names, parse_with, resolve, train_steps
from harness.techniques.proof import proof_tables, prove

FIXTURES = REPO / "tests" / "fixtures" / "techniques"
TINY = {"vocab_size": 64, "model_dim": 32, "num_heads": 2, "num_kv_heads": 1, "mlp_mult": 2, "num_layers": 3}
BASES = ("baseline", "eigenweight", "depth_recurrence")
CONTEXT = {"tables": proof_tables(64)}


def tiny_config(name: str):
    variant, _ = get_variant(name)
    return variant, variant.resolve(None, None, TINY)


@pytest.mark.parametrize("technique", known_technique_names())
@pytest.mark.parametrize("base", BASES)
def test_each_technique_trains_with_each_base_and_is_proven_training_only(technique, base):
    variant, config = tiny_config(base)
    applied = resolve(parse_with(technique), {})
    verdict = prove(variant, config, applied)
    assert verdict["training_only"] and verdict["logits"] == "identical" and verdict["eval_flops"] > 0

    torch.manual_seed(0)
    model = variant.construct(config)
    stack = TechniqueStack(applied, model, config, CONTEXT)
    scored = ScoredModel(model, stack)
    opt = torch.optim.Adam(stack_parameters(scored), lr=3e-3)
    x = torch.randint(0, 64, (4, 33), generator=torch.Generator().manual_seed(1))
    losses = train_steps(scored, stack, opt, x, steps=6, progress=0.05)  # early: fading techniques are on
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    with torch.no_grad():  # evaluation never calls a technique: no training-only terms, whatever is attached
        scored.eval()
        _, aux = scored(x[:, :-1], x[:, 1:], train=False)
    assert aux.item() == 0.0


def stack_parameters(scored):
    return [p for p in scored.parameters() if p.requires_grad]


def test_a_technique_preset_sets_its_flags_and_flags_still_win():
    (spec, config), = resolve(parse_with("mtp:k4"), {})
    assert spec.preset == "k4" and config.mtp_heads == 3
    (_, config), = resolve(parse_with("mtp:k4"), {"mtp_heads": 2})
    assert config.mtp_heads == 2


def test_focal_reweights_only_the_training_loss():
    variant, config = tiny_config("baseline")
    torch.manual_seed(0)
    model = variant.construct(config)
    x = torch.randint(0, 64, (2, 17))
    plain = ScoredModel(model)
    focal = ScoredModel(model, TechniqueStack(resolve(parse_with("focal"), {"focal_gamma": 2.0}), model, config))
    loss, aux = focal(x[:, :-1], x[:, 1:])
    plain_loss = plain(x[:, :-1], x[:, 1:])[0].item()
    assert (loss + aux).item() != pytest.approx(plain_loss)  # what is trained on is reweighted …
    assert loss.item() == pytest.approx(plain_loss)  # … and the reported training loss is the plain cross-entropy
    model.eval()
    with torch.no_grad():
        assert focal(x[:, :-1], x[:, 1:], train=False)[0].item() == plain(x[:, :-1], x[:, 1:], train=False)[0].item()


def test_all_techniques_compose_in_their_documented_order():
    names = [spec.name for spec in parse_with("mtp+deep_supervision,refine_twice,embedding_noise")]
    assert names == ["embedding_noise", "refine_twice", "mtp", "deep_supervision"]
    variant, config = tiny_config("baseline")
    assert prove(variant, config, resolve(parse_with(",".join(names)), {}))["training_only"]


def test_training_only_terms_are_the_techniques_and_fade():
    variant, config = tiny_config("baseline")
    torch.manual_seed(0)
    model = variant.construct(config)
    stack = TechniqueStack(resolve(parse_with("mtp,deep_supervision"), {"mtp_heads": 2}), model, config)
    x = torch.randint(0, 64, (2, 17))
    stack.inputs(x[:, :-1], x[:, 1:])
    model(x[:, :-1])
    terms = stack.loss_terms(model, x[:, :-1], x[:, 1:], None)
    assert set(terms) == {"mtp.t+2", "mtp.t+3", "deep_supervision.layers"}
    stack.progress.fill_(1.0)
    stack.inputs(x[:, :-1], x[:, 1:])
    model(x[:, :-1])
    assert stack.loss_terms(model, x[:, :-1], x[:, 1:], None)["deep_supervision.layers"].item() == 0.0


@pytest.mark.parametrize("fixture,words", [
    ("scales_eval_logits", "evaluation logits differ"),
    ("adds_stored_head", "exported state dict differs (extra_gate)"),
    ("eval_extra_compute", "FLOPs with it"),
])
def test_a_technique_that_changes_the_artifact_or_inference_is_refused(fixture, words):
    variant, config = tiny_config("baseline")
    with pytest.raises(UserError, match="is not training-only") as refused:
        prove(variant, config, resolve(parse_with(str(FIXTURES / f"{fixture}.py")), {}))
    assert words in str(refused.value)


def test_run_records_the_techniques_their_proof_and_labels_them(tmp_path):
    from harness.report import tables

    budget = write_budget(tmp_path / "b.toml")
    results = tmp_path / "r"
    for extra in ([], ["--with", "mtp", "--mtp-heads", "2"]):
        done = harness_cli("run", "--variant", "baseline", "--budget", str(budget), "--max-steps", "3", "--quiet",
                           "--results-dir", str(results), *extra)
        assert done.returncode == 0, done.stderr
    records = {bool(r["techniques"]): r for r in (json.loads(p.read_text()) for p in results.glob("*/run.json"))}
    with_mtp = records[True]
    assert with_mtp["techniques"] == [{"name": "mtp", "config": {"mtp_heads": 2, "mtp_weight": 0.3}}]
    assert with_mtp["technique_proof"]["training_only"] and "-with-mtp-" in with_mtp["run_id"]
    assert with_mtp["config_hash"] != records[False]["config_hash"]
    assert with_mtp["artifact_model_bytes"] > 0 and with_mtp["status"] == "ok"
    assert any(f.endswith("techniques/mtp.py") for f in with_mtp["artifact_code_files"])
    rows = [row for board in tables.build_leaderboards(tables.load_runs(results)) for row in board.rows]
    # (a run the machine's load slowed is labelled "(contended)" beside its name: not what this test is about)
    assert sorted(row["label"].removesuffix(" (contended)") for row in rows) == ["baseline", "baseline +mtp"]


@pytest.mark.parametrize("args,words", [
    (["--with", "nope"], ("unknown technique 'nope'", "known techniques")),
    (["--with", "mtp,mtp"], ("given twice",)),
    (["--with", "mtp:k9"], ("technique 'mtp' has no preset 'k9'", "k2, k4")),
    (["--mtp-heads", "2"], ("unknown parameter --mtp-heads",)),
    (["--with", "mtp", "--mtp-heads", "0"], ("--mtp-heads must be 1 to 8",)),
    (["--with", "mtp", "--mtp-heads", "two"], ("--mtp-heads expects an integer",)),
    (["--with", f"mtp,{FIXTURES / 'not_with_mtp.py'}"], ("cannot be combined", "beyond t+1")),
    (["--with", str(FIXTURES / "scales_eval_logits.py")], ("is not training-only", "evaluation logits differ")),
    (["--with", "grad_checkpoint,activation_l1"], ("cannot be combined", "recomputes them")),
    (["--with", "lr_schedule", "--lr-schedule-shape", "linear"], ("--lr-schedule-shape must be one of",)),
    (["--with", "weight_average", "--weight-average-decay", "1"], ("--weight-average-decay must be between",)),
])
def test_bad_technique_input_is_one_line_and_exit_2(tmp_path, args, words):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("run", "--variant", "baseline", "--budget", str(budget), "--results-dir",
                          str(tmp_path / "r"), *args)
    assert_one_line_error(result, *words)
    assert not Path(tmp_path / "r").exists()


def test_list_shows_every_technique_with_its_flags():
    done = harness_main("list")
    assert done.returncode == 0
    text = done.stdout.split("Training-only techniques", 1)[1]
    for name in known_technique_names():
        assert f"\n{name} (order" in text
    assert "--mtp-heads" in text and "--refine-twice-layer" in text


@pytest.mark.parametrize("techniques", [
    ",".join(n for n in known_technique_names() if n != "grad_checkpoint"),  # all that combine with each other
    "grad_checkpoint,refine_twice,mtp",  # checkpointed blocks under the hooks that read and repeat them
])
def test_a_compiled_run_with_every_technique_is_one_graph(tmp_path, techniques):
    budget = write_budget(tmp_path / "b.toml")
    done = harness_cli("run", "--variant", "baseline", "--with", techniques, "--budget", str(budget),
                       "--max-steps", "2", "--compile", "--quiet", "--results-dir", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    (path,) = (tmp_path / "r").glob("*/run.json")
    record = json.loads(path.read_text())
    assert record["status"] == "ok" and record["compile"]["fullgraph"] and record["compile"]["graph_breaks"] == 0
    assert [t["name"] for t in record["techniques"]] == [s.name for s in parse_with(techniques)]


def test_a_sweep_grids_over_techniques_and_their_flags(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    spec = tmp_path / "techniques.toml"
    spec.write_text(f'name = "tech"\nbudget = "{budget}"\nseeds = [1]\nmax_steps = 2\n[[runs]]\nvariant = "baseline"\n'
                    f'with = ["", "mtp", "mtp+deep_supervision"]\ngrid = {{ mtp_heads = [1, 2] }}\n')
    done = harness_cli("sweep", str(spec), "--wait", "--results-dir", str(tmp_path / "r"), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "r").glob("*/run.json")]
    # the plain variant once (mtp_heads means nothing to it), each technique combination at each grid point
    assert sorted(("+".join(t["name"] for t in r["techniques"]), r["techniques"][0]["config"]["mtp_heads"]
                   if r["techniques"] else 0) for r in records) == [
        ("", 0), ("mtp", 1), ("mtp", 2), ("mtp+deep_supervision", 1), ("mtp+deep_supervision", 2)]
    assert all(r["status"] == "ok" and (r["technique_proof"] or {}).get("training_only", not r["techniques"])
               for r in records)


def test_a_sweep_refuses_an_inference_changing_technique_before_submitting(tmp_path):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("sweep", "--variant", "baseline", "--budget", str(budget), "--with", "",
                          "--with", str(FIXTURES / "scales_eval_logits.py"), "--results-dir", str(tmp_path / "r"))
    assert_one_line_error(result, "is not training-only")
    assert not (tmp_path / "r").exists()


def test_tune_searches_techniques_every_trial_uses_and_turns_others_on_and_off(tmp_path):
    import optuna

    budget = write_budget(tmp_path / "b.toml")
    done = harness_cli("tune", "--variant", "baseline", "--budget", str(budget), "--with", "mtp", "--search-with",
                       "focal", "--search", "mtp_heads=1..2", "--only", "mtp_heads,with_focal,focal_gamma",
                       "--mtp-weight", "0.2", "--trials", "3", "--max-steps", "2", "--sampler-seed", "5",
                       "--results-dir", str(tmp_path / "r"), timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    study = optuna.load_study(study_name="baseline-b", storage=f"sqlite:///{tmp_path / 'r/studies/baseline-b.db'}")
    for trial in study.trials:
        record = json.loads((tmp_path / "r" / trial.user_attrs["run_id"] / "run.json").read_text())
        techniques = {t["name"]: t["config"] for t in record["techniques"]}
        assert set(techniques) == {"mtp", "focal"} if trial.params["with_focal"] else {"mtp"}
        assert techniques["mtp"] == {"mtp_heads": trial.params["mtp_heads"], "mtp_weight": 0.2}
        assert ("focal_gamma" in trial.params) == trial.params["with_focal"]  # sampled only while it is on
        if trial.params["with_focal"]:
            assert techniques["focal"]["focal_gamma"] == trial.params["focal_gamma"]
        assert record["technique_proof"]["training_only"] and record["status"] == "ok"


@pytest.mark.parametrize("args,words", [
    (["--with", "mtp", "--search-with", "mtp"], ("in both --with", "keep one")),
    (["--search-with", "grad_checkpoint,activation_l1"], ("cannot be combined",)),
    (["--with", "mtp", "--mtp-heads", "9"], ("--mtp-heads must be 1 to 8",)),
    (["--search-with", "focal", "--search", "focal_gamma=a..b"], ("--focal-gamma expects a finite number",)),
])
def test_bad_tune_technique_input_is_one_line_and_exit_2(tmp_path, args, words):
    budget = write_budget(tmp_path / "b.toml")
    result = harness_main("tune", "--variant", "baseline", "--budget", str(budget), "--trials", "1", "--dry-run",
                          "--results-dir", str(tmp_path / "r"), *args)
    assert_one_line_error(result, *words)


def test_show_and_check_take_techniques(tmp_path):
    shown = harness_main("show", "baseline", "--with", "mtp,weight_average", "--json")
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert [t["name"] for t in info["techniques"]] == ["mtp", "weight_average"]
    assert info["technique_parameters"] > 0 and info["technique_proof"]["training_only"]
    checked = harness_main("check", "baseline", "--with", str(FIXTURES / "scales_eval_logits.py"))
    assert checked.returncode == 1 and "FAIL  techniques training-only" in checked.stdout
    assert "evaluation logits differ" in checked.stdout
