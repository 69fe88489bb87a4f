"""Recurrent nets (the course's RNN section): torch's RNN, LSTM or GRU over a window, and a
linear read-out of the last step's output (many-to-one: the next value or character), or of
every step's (`every_step`: the next character after each position, as DUDL_RNN_loremipsum
trains).

A series window is (batch, seq_length, features); a text window is (batch, seq_length)
character indices, which an embedding turns into vectors first (the notebook's is square:
as many dimensions as characters). Sized from the data like every dlexp model.
"""

from __future__ import annotations

import torch
from torch import nn

from dlexp.errors import DlexpError

CELLS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


class Recurrent(nn.Module):
    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        cell: str = "rnn",
        hidden: int = 16,
        layers: int = 1,
        bidirectional: bool = False,
        dropout: float = 0.0,
        nonlinearity: str = "tanh",
        embedding: int | None = None,
        every_step: bool = False,
    ) -> None:
        super().__init__()
        if cell not in CELLS:
            raise DlexpError(f"model.cell={cell!r} is not known; use rnn, lstm or gru.")
        if len(input_shape) not in (1, 2):
            raise DlexpError(
                f"model={cell} reads sequences, (steps, features) or (steps,) characters; this "
                f"data's samples are {tuple(input_shape)}: use a sequence data set "
                "(data=alternating, sine or text)."
            )
        if dropout and layers < 2:
            raise DlexpError(
                f"model.dropout={dropout} acts between recurrent layers, and model.layers={layers}: "
                "set model.layers to 2 or more, or model.dropout=0."
            )
        if every_step and bidirectional:
            raise DlexpError(
                f"model={cell} with model.bidirectional=true reads each window backwards too, so "
                "scoring every step (data.source.every_step=true) would show it the characters it "
                "is to predict: set data.source.every_step=false (the character after the window) "
                "or model.bidirectional=false."
            )
        self.cell = cell
        self.every_step = every_step
        self.tokens = len(input_shape) == 1  # character indices, embedded first
        if every_step and not self.tokens:
            raise DlexpError(
                f"model.every_step=true reads out a character after each position of a text "
                f"window; this data's windows are a series {tuple(input_shape)}, scored on the "
                "value after the window: set model.every_step=false."
            )
        if self.tokens:
            self.embedding = nn.Embedding(num_outputs, embedding or num_outputs)
            features = embedding or num_outputs
        else:
            features = input_shape[1]
        extra = {"nonlinearity": nonlinearity} if cell == "rnn" else {}
        self.rnn = CELLS[cell](
            features,
            hidden,
            layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout,
            **extra,
        )
        self.out = nn.Linear(hidden * (2 if bidirectional else 1), num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The read-out of the window's last step, (batch, num_outputs); with every_step, of
        each step: (batch, steps, num_outputs)."""
        y, _ = self._recur(x, None)
        return self.out(y if self.every_step else y[:, -1])

    def step(self, x: torch.Tensor, state):
        """The last step's read-out and the recurrent state after `x`, continuing from `state`
        (None: zeros): generation feeds one item at a time."""
        y, state = self._recur(x, state)
        return self.out(y[:, -1]), state

    def _recur(self, x: torch.Tensor, state):
        if self.tokens:
            if x.is_floating_point():  # (n,) samples of numbers: a table, not a text
                raise DlexpError(
                    f"model={self.cell} reads samples of one dimension as characters (data=text), "
                    f"but this data set's samples are {x.shape[-1]} numbers: use a sequence data "
                    "set (data=text, sine or alternating)."
                )
            x = self.embedding(x)
        return self.rnn(x, state)
