"""The fp32 reference fine-tuned on the user's data, and distillation from it in QAT."""
import dataclasses
import json

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from mpqc.cli import main
from mpqc.data import load_dataset, subset
from mpqc.errors import ConfigError
from mpqc.models import build_model, describe_layers
from mpqc.search import bitops_table
from mpqc.search.loop import SearchSettings, run_search, training_loss

SETTINGS = dict(method="bpnas", epochs=1, finetune_epochs=1, fp32_epochs=1, batch_size=64,
                progress=False)


@pytest.fixture(scope="module")
def tiny_mnist():
    splits = load_dataset("mnist")
    return dataclasses.replace(splits, train=subset(splits.train, 512, 0),
                               val=subset(splits.val, 256, 0), test=subset(splits.test, 256, 0))


def test_training_loss_mixes_labels_and_the_teacher():
    torch.manual_seed(0)
    teacher = torch.nn.Linear(6, 4)
    images, labels = torch.randn(8, 6), torch.randint(0, 4, (8,))
    logits = torch.randn(8, 4, requires_grad=True)
    ce = F.cross_entropy(logits, labels)
    assert torch.equal(training_loss(logits, labels), ce)
    assert torch.equal(training_loss(logits, labels, teacher, images, 0.0), ce)
    # the teacher's own logits: the KL term is zero, only the label term is left
    with torch.no_grad():
        own = teacher(images)
    mixed = training_loss(own, labels, teacher, images, 0.4)
    torch.testing.assert_close(mixed, 0.6 * F.cross_entropy(own, labels))
    # at distill=1 the gradient pulls the student's distribution to the teacher's
    loss = training_loss(logits, labels, teacher, images, 1.0)
    loss.backward()
    expected = (torch.softmax(logits, 1) - torch.softmax(own, 1)).detach() / 8
    torch.testing.assert_close(logits.grad, expected)
    # the teacher gets no gradient
    assert teacher.weight.grad is None


def test_distillation_changes_the_trained_weights_and_its_key(tiny_mnist, tmp_path):
    results = {}
    for distill in (0.0, 0.8):
        torch.manual_seed(0)
        model = build_model("democnn")
        table = bitops_table(describe_layers(model, tiny_mnist.input_shape), (2,), (2,))
        settings = SearchSettings(**SETTINGS, distill=distill)
        results[distill] = run_search(model, tiny_mnist, table, table.uniform(2, 2), settings,
                                      tmp_path / f"d{distill}.ckpt", uniform=(2, 2),
                                      pretrained=True)
    a, b = (results[d]["model_q"].state_dict() for d in (0.0, 0.8))
    assert not all(torch.equal(a[k], b[k]) for k in a)
    # the settings that existed before distillation keep their checkpoint key
    plain = SearchSettings(**SETTINGS).key_fields()
    assert "distill" not in plain and "fp32_finetune_epochs" not in plain
    assert "fp32_finetune_lr" not in plain
    assert SearchSettings(**SETTINGS, distill=0.8).key_fields()["distill"] == 0.8


def test_pretrained_weights_are_fine_tuned_and_both_accuracies_reported(tiny_mnist, tmp_path):
    torch.manual_seed(0)
    model = build_model("democnn")
    given = {k: v.clone() for k, v in model.state_dict().items()}
    table = bitops_table(describe_layers(model, tiny_mnist.input_shape), (2,), (2,))
    settings = SearchSettings(**{**SETTINGS, "finetune_epochs": 0, "fp32_finetune_epochs": 2})
    result = run_search(model, tiny_mnist, table, table.uniform(2, 2), settings,
                        tmp_path / "f.ckpt", uniform=(2, 2), pretrained=True)
    # an untrained democnn is near chance; two epochs on 512 digits lift it (9% -> 20%)
    assert result["fp32_pretrained_accuracy"] < 0.15
    assert result["fp32_accuracy"] > result["fp32_pretrained_accuracy"] + 0.05
    assert not torch.equal(model.conv1.weight, given["conv1.weight"])
    # without fine-tuning: the weights as given, no second accuracy
    torch.manual_seed(0)
    model = build_model("democnn")
    plain = run_search(model, tiny_mnist, table, table.uniform(2, 2),
                       SearchSettings(**{**SETTINGS, "finetune_epochs": 0}),
                       tmp_path / "g.ckpt", uniform=(2, 2), pretrained=True)
    assert plain["fp32_pretrained_accuracy"] is None
    assert torch.equal(model.conv1.weight, given["conv1.weight"])


def test_search_cli_writes_the_fine_tuned_fp32_start(tmp_path):
    torch.manual_seed(0)
    weights = tmp_path / "given.pt"
    torch.save(build_model("democnn").state_dict(), weights)
    out = tmp_path / "s.json"
    args = ["search", "--model", "democnn", "--data", "mnist", "--weights", str(weights),
            "--uniform", "2,2", "--budget-ratio", "1", "--bits", "2", "--epochs", "1",
            "--finetune-epochs", "1", "--fp32-finetune-epochs", "1", "--distill", "0.5",
            "--subset", "512", "--batch-size", "64", "--out", str(out), "--quiet"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["distill"] == 0.5
    assert report["fp32_weights"] == str(out.with_name("s.fp32.pt"))
    tuned = torch.load(report["fp32_weights"], weights_only=True)
    assert not torch.equal(tuned["conv1.weight"],
                           torch.load(weights, weights_only=True)["conv1.weight"])
    assert 0 <= report["fp32_pretrained_accuracy"] <= 1
    bad = CliRunner().invoke(main, args[:-3] + ["--distill", "1.5", "--out", str(out)])
    assert bad.exit_code == 2 and "--distill" in bad.output


def test_fine_tuning_starts_from_the_fp32_weights_when_asked(tiny_mnist, tmp_path):
    """finetune_from="fp32": the chosen configuration's QAT starts from the fp32 weights
    (steps calibrated anew), not from the supernet's shared weights the search trained."""
    starts = {}
    for start in ("supernet", "fp32"):
        torch.manual_seed(0)
        model = build_model("democnn")
        table = bitops_table(describe_layers(model, tiny_mnist.input_shape), (2, 4), (2, 4))
        settings = SearchSettings(**{**SETTINGS, "finetune_epochs": 0, "finetune_from": start})
        result = run_search(model, tiny_mnist, table, table.uniform(4, 4), settings,
                            tmp_path / f"{start}.ckpt", pretrained=True)
        starts[start] = (model, result["model_q"], table.names)
    for start, (model, qmodel, names) in starts.items():
        same = [torch.equal(qmodel.get_submodule(n).weight, model.get_submodule(n).weight)
                for n in names]
        # the supernet's weights moved during the search epoch; the fp32 ones did not
        assert all(same) if start == "fp32" else not any(same), start
    assert "finetune_from" not in SearchSettings(**SETTINGS).key_fields()
    assert SearchSettings(**SETTINGS, finetune_from="fp32").key_fields()["finetune_from"] == "fp32"
    with pytest.raises(ConfigError, match="finetune_from"):
        run_search(build_model("democnn"), tiny_mnist, table, table.uniform(4, 4),
                   SearchSettings(**SETTINGS, finetune_from="scratch"), tmp_path / "x.ckpt")
