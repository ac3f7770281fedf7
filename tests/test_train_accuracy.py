"""TrainSetAccuracy: the tested weights evaluated on the training images, in eval mode."""

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from lightning_gaaf.callbacks.train_accuracy import TrainSetAccuracy
from lightning_gaaf.datamodules import MNISTDataModule
from lightning_gaaf.datamodules.synthetic import write_mnist
from lightning_gaaf.models import MLP, ImageClassifier

pytestmark = pytest.mark.filterwarnings("ignore::pytorch_lightning.utilities.warnings.PossibleUserWarning")


def test_train_accuracy_is_logged_with_the_test_metrics_in_eval_mode(tmp_path: Path):
    write_mnist(tmp_path / "data", n_train=300, n_test=50)
    dm = MNISTDataModule(
        root=str(tmp_path / "data"), val_size=50, train_size=170, batch_size=64, download=False
    )
    pl.seed_everything(0)
    model = ImageClassifier(MLP(hidden=[32], dropout=0.5))
    trainer = pl.Trainer(
        max_epochs=2, callbacks=[TrainSetAccuracy()], logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(model, dm)
    (metrics,) = trainer.test(model, dm, verbose=False)
    model.eval()
    with torch.no_grad():
        x, y = dm.on_after_batch_transfer((dm.train_dataset.images, dm.train_dataset.labels), 0)
        logits = model(x)
    assert len(dm.train_dataset) == 170
    assert metrics["test/train_acc"] == pytest.approx(float((logits.argmax(-1) == y).float().mean()))
    assert metrics["test/train_loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-5)
    assert set(metrics) >= {"test/acc", "test/loss"}  # beside the test metrics, from the same weights
