"""What streaming a user's image folder costs a training step, against holding it in memory as uint8.

    python benchmarks/data_throughput.py                          # 2,000 random 32x32 RGB PNGs in a temp folder
    python benchmarks/data_throughput.py --folder DIR --image-size 32 32   # DIR/train/<class>/*.png of your own
    python benchmarks/data_throughput.py --images 256 --steps 4 --rounds 2 # a smoke test

Three ways of feeding the same TRADES step (SmallCNN, 5-step attack, batch 128):

* ``memory``: the folder decoded once into a uint8 TensorData, batches by ``iterate_batches``;
* ``stream-0``: ``StreamedData`` over ``FolderImages``, each batch decoded in this process;
* ``stream-N``: the same with N DataLoader worker processes decoding ahead (``--workers``).

Each has its own model and optimizer from the same initial weights and its own generators
with the same seeds, so all three train on the same batches in the same order: the script
checks that their losses agree bit for bit. Rounds are interleaved in an order reshuffled
every round (as ``rat bench`` does), and each round starts a fresh epoch iterator, so worker
start-up is paid once per round, as it is once per epoch in training. A step's time is the
wait for its batch plus the step; the table reports both.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ratkit.bench import ratio_ci
from ratkit.data import dataset_info, iterate_batches
from ratkit.data.formats.folder import FolderImages, scan_folder
from ratkit.data.streaming import StreamedData, iterate_streamed_batches
from ratkit.methods import TRADES
from ratkit.models import SmallCNN


def write_random_folder(root: Path, images: int, size: int, classes: int, seed: int) -> None:
    """``root/train/class_<k>/<i>.png``: ``images`` random RGB images spread over ``classes`` folders."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        folder = root / "train" / f"class_{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(folder / f"{i:06d}.png")


def endless(make_epoch):
    """Batches of epoch 0, 1, ... of one feeding, each epoch from its own seeded generator."""
    epoch = 0
    while True:
        yield from make_epoch(epoch)
        epoch += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, help="an image folder (DIR/train/<class>/...); default: write one")
    parser.add_argument("--images", type=int, default=2000, help="images in the written folder")
    parser.add_argument("--size", type=int, default=32, help="side of the written images")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), help="resize to H x W")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--attack-steps", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12, help="timed steps per feeding and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the last feeding")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads of the step")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.folder
        if folder is None:
            folder = Path(tmp)
            started = time.perf_counter()
            write_random_folder(folder, args.images, args.size, 10, args.seed)
            print(f"wrote {args.images} random {args.size}x{args.size} RGB PNGs in {time.perf_counter() - started:.1f} s")
        run(folder, args)


def run(folder: Path, args) -> None:
    index = scan_folder(folder, "train")
    images = FolderImages(index, image_size=tuple(args.image_size) if args.image_size else None)
    c, h, w = images.shape
    info = dataclasses.replace(dataset_info("cifar10"), name=folder.name or "folder", num_classes=len(index.classes),
                               image_shape=(c, h, w), mean=(0.5,) * c, std=(0.25,) * c,
                               class_names=index.classes, files=None)
    stream = StreamedData(info, images)
    started = time.perf_counter()
    memory = stream.load()
    print(f"{len(index)} images of {c}x{h}x{w} in {len(index.classes)} classes; decoded into memory (uint8, "
          f"{memory.nbytes / 2**20:.1f} MiB) in {time.perf_counter() - started:.2f} s; "
          f"{args.threads} torch threads, batch {args.batch_size}, TRADES with {args.attack_steps} attack steps")

    def feed(name: str, round_index: int):
        def epoch(e: int):
            g = torch.Generator().manual_seed(args.seed * 1_000_003 + round_index * 1009 + e)
            if name == "memory":
                return iterate_batches(memory, args.batch_size, shuffle=True, generator=g, drop_last=True)
            workers = int(name.split("-")[1])
            return iterate_streamed_batches(stream, args.batch_size, shuffle=True, generator=g, drop_last=True,
                                            num_workers=workers)
        return endless(epoch)

    torch.manual_seed(args.seed)
    initial = SmallCNN(num_classes=len(index.classes), in_channels=c, mean=info.mean, std=info.std,
                       input_size=(h, w))
    method = TRADES.from_settings(8 / 255, steps=args.attack_steps, beta=6.0)
    names = list(dict.fromkeys(["memory", "stream-0", f"stream-{args.workers}"]))
    runners = {}
    for name in names:
        model = copy.deepcopy(initial)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        runners[name] = (model, optimizer, torch.Generator().manual_seed(args.seed))

    def train(name: str, batches, steps: int, record: bool):
        model, optimizer, g = runners[name]
        for _ in range(steps):
            t0 = time.perf_counter()
            x, y = next(batches)
            t1 = time.perf_counter()
            loss = method.step(model, optimizer, x, y, generator=g).loss.item()
            t2 = time.perf_counter()
            if record:
                waits[name][-1].append(t1 - t0)
                times[name][-1].append(t2 - t0)
                losses[name].append(loss)

    waits = {n: [] for n in names}
    times = {n: [] for n in names}
    losses = {n: [] for n in names}
    for name in names:  # warm-up, untimed: the same two steps for every feeding
        batches = feed(name, -1)
        train(name, batches, 2, record=False)
        batches.close()
    order = random.Random(args.seed)
    for r in range(args.rounds):
        order.shuffle(names)
        for name in names:
            waits[name].append([])
            times[name].append([])
            batches = feed(name, r)
            train(name, batches, args.steps, record=True)
            batches.close()  # ends this round's epoch; stops its worker processes
    names.sort(key=lambda n: (n != "memory", n))

    print(f"\n{args.rounds} rounds x {args.steps} timed steps per feeding (median over all timed steps)")
    print(f"{'feeding':<12}{'images/s':>10}{'ms/step':>10}{'data ms':>10}{'vs memory':>11}   95% CI")
    base = statistics.median(t for rt in times["memory"] for t in rt)
    for name in names:
        median = statistics.median(t for rt in times[name] for t in rt)
        wait = statistics.median(t for rt in waits[name] for t in rt)
        ratio = base / median  # throughput relative to memory
        if name == "memory":
            ci = ""
        else:
            low, high = ratio_ci(times["memory"], times[name])
            ci = f"{low:.3f}-{high:.3f}"
        print(f"{name:<12}{args.batch_size / median:>10.1f}{1000 * median:>10.1f}{1000 * wait:>10.2f}"
              f"{ratio:>11.3f}   {ci}")
    same = all(losses[n] == losses["memory"] for n in names)
    print(f"\nlosses of the three feedings identical step for step: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
