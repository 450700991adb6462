"""The library's own test accuracy (verify --accuracy, the pipeline's verify step): the
deployed network scored image by image against the labels, agreeing with the fake-quant
PyTorch model it was built from."""
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mpqc.build.accuracy import library_accuracy, scored_indices
from mpqc.build.compile import compile_library
from mpqc.build.network import NetworkSpec, build_quantized_model
from mpqc.cli import main
from mpqc.data import load_dataset
from mpqc.errors import ConfigError
from mpqc.evaluation import evaluate_accuracy
from mpqc.models import build_model
from mpqc.targets import load_target


@pytest.fixture(scope="module")
def trained_democnn(tmp_path_factory):
    """democnn trained for 200 steps on MNIST (about 90% test accuracy in fp32), compiled
    at uniform 4x4 with the data recorded in its manifest."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("accuracy")
    train = load_dataset("mnist", augment=False).train
    model = build_model("democnn")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True)
    for step, (images, labels) in zip(range(200), loader):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        opt.step()
    weights = root / "democnn.pt"
    torch.save(model.state_dict(), weights)
    spec = NetworkSpec(model="democnn", weights=str(weights), config="uniform:4,4",
                       data="mnist")
    compile_library(spec, load_target("host"), root / "democnn.so")
    return root / "democnn.so", spec


def test_the_library_scores_what_its_quantized_model_scores(trained_democnn):
    library, spec = trained_democnn
    scored = library_accuracy(library, limit=400)
    assert scored.images == 400 and scored.test_size == 10000
    # a trained network: far from chance, so images and labels are paired correctly
    assert scored.accuracy > 0.7, scored

    model, _ = build_quantized_model(spec)
    test = load_dataset("mnist", augment=False).test
    same = evaluate_accuracy(model, test.select(scored_indices(len(test), 400)))
    # the integer library and the float fake-quant model differ only where a rounding
    # of the rescale breaks a near tie between two logits
    assert abs(scored.correct - same.correct) <= 2, (scored.correct, same.correct)


def test_a_subset_is_drawn_from_every_class():
    # the CIFAR-10 image folder's test split is sorted by class: the first 200 would be
    # airplanes only
    labels = np.repeat(np.arange(10), 1000)
    picked = scored_indices(len(labels), 200)
    assert len(picked) == 200 and len(set(picked)) == 200
    assert set(labels[picked]) == set(range(10))
    assert (np.diff(picked) > 0).all()
    assert (scored_indices(50, None) == np.arange(50)).all()
    assert (scored_indices(50, 80) == np.arange(50)).all()
    with pytest.raises(ConfigError, match="at least one"):
        scored_indices(50, 0)


def test_verify_prints_and_writes_the_accuracy(trained_democnn):
    library, _ = trained_democnn
    result = CliRunner().invoke(main, ["verify", str(library), "--images", "2",
                                       "--accuracy-images", "100", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["exact"] is True
    assert report["library_accuracy"]["images"] == 100
    assert report["library_accuracy"]["accuracy"] > 0.7
    text = CliRunner().invoke(main, ["verify", str(library), "--images", "1",
                                     "--accuracy-images", "50"])
    assert text.exit_code == 0, text.output
    assert "top-1 on 50 of 10000 test images" in text.output


def test_a_library_built_without_data_cannot_be_scored(tmp_path):
    spec = NetworkSpec(model="democnn", config="uniform:2,2")
    compile_library(spec, load_target("host"), tmp_path / "nodata.so")
    with pytest.raises(ConfigError, match="built without --data"):
        library_accuracy(tmp_path / "nodata.so", limit=10)
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "nodata.so"), "--accuracy"])
    assert result.exit_code == 2
    assert "built without --data" in result.output
