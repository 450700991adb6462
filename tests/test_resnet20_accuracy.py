"""Acceptance: the shared pretrained ResNet-20 scores >= 80% on the shared CIFAR-10 test
split (about 81% on this JPEG re-encoding, see ../shared/data/README.md)."""
from mpqc.data import load_dataset
from mpqc.evaluation import evaluate_accuracy
from mpqc.models import build_model, load_weights
from tests.conftest import shared_file


def test_pretrained_resnet20_scores_80_percent(tmp_path):
    weights = shared_file("models", "resnet20-12fca82f.th")
    data = shared_file("data", "cifar10-jpeg-q75.zip")
    splits = load_dataset(f"imagefolder:{data}", cache_dir=tmp_path, augment=False)
    model = build_model("resnet20")
    load_weights(model, weights)
    result = evaluate_accuracy(model, splits.test)
    assert result.total == 10000
    assert result.accuracy >= 0.80, result
