"""Shell completion: the scripts that `dlexp -sc install=bash|zsh|fish` prints, and the words
they ask for (`dlexp -sc query=bash|fish` with the typed line in COMP_LINE).

`dlexp train` words are Hydra's (config groups, options, keys); this module completes the
command word and the key=value arguments of the other commands: their keys, their choices,
folders and checkpoint files, a sweep's metrics and torchvision's backbone names. The script is
dlexp's rather than Hydra's so that a finished word (`train`, `model=cnn`, `ckpt=best`) gets its
space while `key=`, `trainer.` and `outputs/` wait for more, as in git's completion.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

BASH = r"""_dlexp_completion()
{
    local word=${COMP_WORDS[COMP_CWORD]} choices matches w
    choices=$(COMP_POINT=$COMP_POINT COMP_LINE=$COMP_LINE dlexp -sc query=bash 2>/dev/null)
    matches=($(compgen -W "$choices" -- "$word"))
    COMPREPLY=()
    for w in "${matches[@]}"; do  # a finished word gets its space (zsh's bashcompinit too)
        case $w in *[=/.]) COMPREPLY+=("$w") ;; *) COMPREPLY+=("$w ") ;; esac
    done
}
COMP_WORDBREAKS=${COMP_WORDBREAKS//=}
complete -o nospace -o default -F _dlexp_completion dlexp
"""

FISH = """function __dlexp_complete
    set -lx COMP_LINE (commandline -cp)
    dlexp -sc query=fish
end
complete -c dlexp -f -a '(__dlexp_complete)'
"""


def script(shell: str) -> str:
    """The script that `eval "$(dlexp -sc install=<shell>)"` (bash, zsh with bashcompinit) or
    `dlexp -sc install=fish | source` loads."""
    return FISH if shell == "fish" else BASH


def split(line: str) -> tuple[list[str], str]:
    """The finished words after `dlexp`, and the word being typed ("" after a space)."""
    words = line.split()[1:]
    if line.endswith(" ") or not words:
        return words, ""
    return words[:-1], words[-1]


def candidates(
    done: list[str],
    word: str,
    commands: list[str],
    specs: dict[str, dict[str, tuple[str, object]]],
    positional: dict[str, str],
) -> list[str]:
    """The words that may come next for a non-train command line (`done` after `dlexp`, the
    command first): commands, `key=` and `key=value` (from `specs`, as cli.parse_pairs reads
    them), and for a command's first word its `positional` kind."""
    if not done:
        return [c for c in commands if c.startswith(word)]
    command, args = done[0], done[1:]
    spec = specs.get(command, {})
    if command in positional and not args and "=" not in word:
        return _values(positional[command], word, args)
    key, sep, value = word.partition("=")
    if sep and key in spec:
        return [f"{key}={v}" for v in _values(spec[key][1], value, args)]
    given = {a.partition("=")[0] for a in args}
    return [f"{k}=" for k in spec if k not in given and k.startswith(word)]


def _values(kind: object, typed: str, args: list[str]) -> list[str]:
    if isinstance(kind, tuple):
        return [v for v in kind if v.startswith(typed)]
    if kind == "bool":
        return [v for v in ("true", "false") if v.startswith(typed)]
    if kind in ("run", "folder", "file"):
        return _paths(typed, kind)
    if kind == "metric":  # of the sweep folder named before
        return [m for m in _sweep_metrics(args[0] if args else "") if m.startswith(typed)]
    if kind in ("backbone", "weights"):  # torchvision's names (importing it takes a second)
        import torchvision

        if kind == "backbone":
            names = torchvision.models.list_models(torchvision.models)
        else:  # the weights of the backbone named before
            try:
                names = [
                    "DEFAULT",
                    *(w.name for w in torchvision.models.get_model_weights(args[0])),
                ]
            except (IndexError, ValueError, KeyError):
                names = []
        return [n for n in names if n.startswith(typed)]
    return []


def _paths(typed: str, kind: object) -> list[str]:
    """Folders (with their "/", to go on into them) and, for a run, its checkpoint files; for
    kind "file", any file."""
    folder, _, start = typed.rpartition("/")
    where = Path(folder).expanduser() if folder else Path("/" if typed.startswith("/") else ".")
    if not where.is_dir():
        return []
    out = []
    for entry in sorted(where.iterdir()):
        if not entry.name.startswith(start) or (entry.name.startswith(".") and not start):
            continue
        text = f"{folder}/{entry.name}" if folder or typed.startswith("/") else entry.name
        if entry.is_dir():
            out.append(text + "/")
        elif kind == "file" or (kind == "run" and entry.suffix == ".pt"):
            out.append(text)
    return out


def _sweep_metrics(folder: str) -> list[str]:
    """The metrics a sweep's jobs recorded (metrics.json of the first finished job)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        return []
    for job in sorted(root.iterdir()):
        metrics = job / "metrics.json"
        if metrics.is_file():
            keys = json.loads(metrics.read_text())
            return [k for k in keys if k.startswith(("train/", "val/", "test/"))]
    return []


def query(
    shell: str,
    commands: list[str],
    specs: dict[str, dict[str, tuple[str, object]]],
    positional: dict[str, str],
) -> None:
    """Print the candidates for COMP_LINE, in the shell's format."""
    done, word = split(os.environ.get("COMP_LINE", ""))
    words = candidates(done, word, commands, specs, positional)
    print(("\n" if shell == "fish" else " ").join(words))
