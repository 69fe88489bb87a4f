"""The reference: the course's own MNIST CNN training loop, as the course writes it.

torchvision's MNIST with per-sample ToTensor and Normalize, a DataLoader with batch size 32,
Adam at 1e-3. Prints one JSON line per epoch (training seconds, samples, test accuracy);
evaluation time is not counted as training time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from torch import nn
from torch.utils.data import DataLoader


class CourseCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 10, kernel_size=5, stride=1, padding=1)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=5, stride=1, padding=1)
        self.fc1 = nn.Linear(20 * 5 * 5, 50)
        self.out = nn.Linear(50, 10)

    def forward(self, x):
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = x.reshape(x.shape[0], -1)
        x = F.relu(self.fc1(x))
        return self.out(x)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--root", required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--target", type=float, default=None, help="go on until this test accuracy")
    parser.add_argument("--max-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    transform = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
    train = torchvision.datasets.MNIST(args.root, train=True, transform=transform)
    test = torchvision.datasets.MNIST(args.root, train=False, transform=transform)
    train_loader = DataLoader(train, batch_size=32, shuffle=True, drop_last=True)
    test_loader = DataLoader(test, batch_size=len(test))
    net = CourseCNN()
    loss_fn = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.001)

    for epoch in range(1, args.max_epochs + 1):
        net.train()
        tic = time.perf_counter()
        samples = 0
        for x, y in train_loader:
            loss = loss_fn(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            samples += len(y)
        seconds = time.perf_counter() - tic
        net.eval()
        with torch.no_grad():
            x, y = next(iter(test_loader))
            acc = (net(x).argmax(1) == y).float().mean().item()
        print(
            json.dumps(
                {"epoch": epoch, "train_seconds": seconds, "samples": samples, "test_acc": acc}
            )
        )
        if epoch >= args.epochs and (args.target is None or acc >= args.target):
            break


if __name__ == "__main__":
    main()
