"""Train a feature network for the metrics, as the shipped weights were trained:

    python -m imm_ext.eval.train_feature_net digits                 # a few seconds on a CPU
    python -m imm_ext.eval.train_feature_net fashion-mnist          # a minute or two on a CPU
    python -m imm_ext.eval.train_feature_net digits --out DIR       # write elsewhere than the package

Fixed seed and settings (SETTINGS); Adam on cross-entropy over the dataset's train split, batches from
`BatchStream`; the accuracy is measured on the held-out test split. The weights go to
DIR/<name>.safetensors and their sha256, accuracy and settings to DIR/manifest.json. Results can differ
in the last bits across machines and thread counts, so the hash of a retrained net need not match the
shipped one; its accuracy will be close.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Optional

import torch

from ..data import BatchStream, load_dataset
from .feature_nets import ARCHITECTURES, MANIFEST, WEIGHTS_DIR, read_manifest, sha256_of, weights_file

SETTINGS = {
    "digits": dict(seed=0, epochs=60, batch_size=64, lr=2e-3),
    "fashion-mnist": dict(seed=0, epochs=3, batch_size=64, lr=2e-3),
}
# One CPU thread: these nets are too small to gain from more, and on a busy machine the threads'
# synchronisation made training many times slower. It also keeps the arithmetic order fixed.
TRAINING_THREADS = 1


@torch.no_grad()
def accuracy(net, dataset, batch_size: int = 1000) -> float:
    x, labels = dataset.tensors()
    net.eval()
    correct = sum(int((net(xb).argmax(1) == lb).sum()) for xb, lb in zip(x.split(batch_size), labels.split(batch_size)))
    return correct / len(x)


def train_feature_net(name: str, *, out_dir: Optional[str] = None, data_path: Optional[str] = None) -> dict:
    """Train, save and record the feature net `name`; returns its manifest entry."""
    if name not in ARCHITECTURES:
        raise ValueError(f"name must be one of {', '.join(map(repr, ARCHITECTURES))}; got {name!r}")
    settings = SETTINGS[name]
    paths = {} if data_path is None else {"path": data_path}
    train, test = load_dataset(name, split="train", **paths), load_dataset(name, split="test", **paths)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation that leaves the caller's RNG alone
        torch.manual_seed(settings["seed"])
        net = ARCHITECTURES[name]()
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAINING_THREADS)
    try:
        _fit(net, train, settings)
        test_accuracy = accuracy(net, test)
    finally:
        torch.set_num_threads(threads)
    return save_feature_net(net, test_accuracy, out_dir=out_dir)


def _fit(net, train, settings: dict) -> None:
    optimizer = torch.optim.Adam(net.parameters(), lr=settings["lr"])
    stream = BatchStream(train, settings["batch_size"], seed=settings["seed"])
    net.train()
    for _ in range(settings["epochs"] * len(train) // settings["batch_size"]):
        x, labels = next(stream)
        loss = torch.nn.functional.cross_entropy(net(x), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


def save_feature_net(net, test_accuracy: float, *, out_dir: Optional[str] = None) -> dict:
    from safetensors.torch import save_file

    directory = WEIGHTS_DIR if out_dir is None else os.fspath(out_dir)
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, weights_file(net.name))
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, path)
    os.chmod(path, 0o644)  # package data: readable by everyone once installed
    entry = {"file": weights_file(net.name), "sha256": sha256_of(path), "test_accuracy": round(test_accuracy, 4),
             "feature_dim": net.feature_dim, "input_shape": list(net.input_shape),
             "settings": SETTINGS[net.name], "torch": torch.__version__.split("+")[0]}
    manifest = read_manifest(directory)
    manifest[net.name] = entry
    with open(os.path.join(directory, MANIFEST), "w") as file:
        json.dump(manifest, file, indent=2, sort_keys=True)
        file.write("\n")
    return entry


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(ARCHITECTURES))
    parser.add_argument("--out", default=None, help="output folder (default: the package's weights folder)")
    parser.add_argument("--data-path", default=None, help="folder of the dataset's files (fashion-mnist)")
    args = parser.parse_args(argv)
    entry = train_feature_net(args.name, out_dir=args.out, data_path=args.data_path)
    print(json.dumps({args.name: entry}, indent=2))


if __name__ == "__main__":
    main()
