"""`dlexp <command> [overrides]`: thin shells around plain functions.

Heavy imports (torch, hydra) happen inside the commands so that `dlexp --help` is instant.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from omegaconf import DictConfig

USAGE = """usage: dlexp <command> [key=value ...]

Deep-learning experiments from the command line: Hydra configs, one trainer, TensorBoard.

commands:
  train    train a model: dlexp train model=cnn data=mnist trainer.epochs=3
           sweeps with -m: dlexp train -m optimizer.lr=1e-4,1e-3,1e-2
           config groups and options: dlexp train --help
  eval     score a finished run on its test split: dlexp eval run=<run folder or .pt> [ckpt=best]
  data     list the data sets, whether their files are present and how to get them
  report   compare the jobs of a sweep: dlexp report outputs/sweeps/<time> [metric=val/acc]
  sample   a GAN's images, a series continued, a text model's text: dlexp sample run=<run folder>
  stylize  style transfer: dlexp stylize content=photo.jpg style=painting.jpg
  weights  are a torchvision model's pretrained weights cached? dlexp weights resnet18 [download=true]

Runs land in outputs/ (see them with: tensorboard --logdir outputs).
"""


def config_dir() -> Path:
    """The configs shipped in the wheel, or the repo's top-level configs/ in a source checkout."""
    packaged = Path(__file__).parent / "configs"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "configs"


def compose_train(*overrides: str, hydra: bool = False) -> DictConfig:
    """The config `dlexp train <overrides>` runs, composed in this process (for scripts and
    tests that call `train(cfg)`); `hydra=True` keeps Hydra's own node (the sweep's params)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


def fail(message: str, code: int = 2) -> None:
    print(f"dlexp: error: {message}", file=sys.stderr)
    raise SystemExit(code)


@contextlib.contextmanager
def user_errors():
    """A user's mistake (a DlexpError, possibly wrapped by hydra) ends as one paragraph, exit 2."""
    from dlexp.errors import user_error

    try:
        yield
    except Exception as exc:
        err = user_error(exc)
        if err is None:
            raise
        fail(str(err))


def asks_help(args: list[str], text: str, needs_args: bool = False) -> bool:
    """Print a command's help for -h/--help (or no arguments, where some are required)."""
    if "-h" in args or "--help" in args or (needs_args and not args):
        print(text)
        return True
    return False


# What each command's own key=value arguments may be: a type name or a tuple of choices.
# (run, folder, file, metric, weights: text that shell completion completes as such.)
KINDS = {
    "count": (lambda v: v.isdigit() and int(v) >= 1, "a whole number >= 1, e.g. {key}=64"),
    "int": (lambda v: v.lstrip("-").isdigit(), "a whole number, e.g. {key}=0"),
    "bool": (lambda v: v in ("true", "false"), "true or false"),
    "float": (lambda v: v.replace(".", "", 1).isdigit(), "a number >= 0, e.g. {key}=0.8"),
    **dict.fromkeys(("text", "run", "folder", "file", "metric", "weights"), (lambda v: True, "")),
}
DEVICES = ("auto", "cpu", "cuda", "mps")
# Each command's key=value arguments: key -> (default, kind).
SPECS = {
    "eval": {"run": ("", "run"), "ckpt": ("last", ("last", "best")), "device": ("auto", DEVICES)},
    "data": {"root": ("", "folder")},  # "": DLEXP_DATA or ./data, read when the command runs
    "report": {"metric": ("", "metric"), "last": ("0", "count"), "plot": ("true", "bool")},
    "weights": {"weights": ("DEFAULT", "weights"), "download": ("false", "bool")},
    "sample": {
        "run": ("", "run"),
        "n": ("", "count"),  # "": the run's kind's default
        "out": ("", "file"),
        "seed": ("0", "int"),
        "prompt": ("", "text"),
        "temperature": ("1.0", "float"),
    },
    "stylize": {"content": ("", "file"), "style": ("", "file")},  # (and train's overrides)
}
POSITIONAL = {"report": "folder", "weights": "backbone"}  # a command's first word, if any


def parse_pairs(
    args: list[str], spec: dict[str, tuple[str, str | tuple[str, ...]]], command: str
) -> dict[str, str]:
    """key=value arguments of the non-Hydra commands: spec maps each key to (default, kind),
    where kind is a name in KINDS or a tuple of the allowed values."""
    out = {key: default for key, (default, _) in spec.items()}
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or key not in spec:
            fail(
                f"`dlexp {command}` does not take {arg!r}; it takes "
                + ", ".join(f"{k}=..." for k in spec)
                + f" (see dlexp {command} --help)."
            )
        kind = spec[key][1]
        if isinstance(kind, tuple):
            if value not in kind:
                fail(f"{key}={value} is not one of the choices: {', '.join(kind)}.")
        elif not KINDS[kind][0](value):
            fail(f"{key}={value} is not valid: it must be {KINDS[kind][1].format(key=key)}.")
        out[key] = value
    return out


def cmd_train(args: list[str]) -> None:
    quiet = {"-h", "--help", "-sc", "--shell-completion", "-c", "--cfg", "-i", "--info"}
    if sys.stderr.isatty() and not quiet & set(args):  # the imports take seconds: say so
        print("dlexp: loading PyTorch and composing the config ...", file=sys.stderr, flush=True)
    from dlexp.hydra_app import hydra_train

    with user_errors():
        hydra_train(args, str(config_dir()))


EVAL_HELP = """usage: dlexp eval run=<run folder or checkpoint .pt> [ckpt=last|best] [device=auto|cpu|cuda|mps]

Rebuilds the run's data and model from the config stored in its checkpoint and prints the test
metrics, named as training reported them (test/acc, test/loss, ...).
"""


def cmd_eval(args: list[str]) -> None:
    if asks_help(args, EVAL_HELP):
        return
    opts = parse_pairs(args, SPECS["eval"], "eval")
    if not opts["run"]:
        fail(
            "`dlexp eval` needs run=<run folder or checkpoint file>, e.g. run=outputs/runs/<name>."
        )
    from dlexp.evaluate import evaluate
    from dlexp.progress import log_to_console

    log_to_console()

    with user_errors():
        evaluate(opts["run"], opts["ckpt"], opts["device"])


DATA_HELP = """usage: dlexp data [root=<data folder>]

Lists every data set: whether its files are under the data root (default ./data, or the
DLEXP_DATA environment variable), where they are expected, and how to get them.
"""


def cmd_data(args: list[str]) -> None:
    if asks_help(args, DATA_HELP):
        return
    opts = parse_pairs(args, SPECS["data"], "data")
    opts["root"] = opts["root"] or os.environ.get("DLEXP_DATA", "./data")
    from omegaconf import OmegaConf

    from dlexp.data.images import expected_files

    root = Path(opts["root"]).expanduser().resolve()
    print(f"data sets under {root} (change with root= or DLEXP_DATA)")
    if not root.is_dir():
        print(f"  note: {root} does not exist, so no data set file is there yet")
    print()
    for path in sorted((config_dir() / "data").glob("*.yaml")):
        cfg = OmegaConf.load(path)
        about = path.read_text().splitlines()[0].lstrip("# ")
        if "root" not in cfg.source:  # generated, shipped, or the user's own image files
            print(f"  {path.stem:<14} {'built in':<14} {about}")
            continue
        split = {"split": cfg.source.split} if "split" in cfg.source else {}
        folder, files = expected_files(cfg.name, opts["root"], **split)
        missing = [f for f in files if not (folder / f).is_file()]
        status = "present" if not missing else f"missing {len(missing)} of {len(files)}"
        print(f"  {path.stem:<14} {status:<14} {about}")
        print(f"  {'':<14} {'expected in':<14} {folder}")
        if missing:
            print(f"  {'':<14} {'to get them':<14} dlexp train data={path.stem} data.download=true")
            print(f"  {'':<14} {'':<14} (online), or copy {', '.join(missing)} there")


REPORT_HELP = """usage: dlexp report <sweep folder> [metric=val/acc] [last=1] [plot=true]

A table of every job of a sweep (its swept values, final train/val/test metrics, status and
time), sorted by the metric with the best job marked; writes summary.csv and summary.png (the
metric against the first swept value, one line per value of the second) into the folder.
The metric is by default the sweep's objective: the one the jobs' best.pt and the sweeper
used (val/acc, or val/loss without accuracy), never a test metric unless asked for.
last=K scores each job by the mean of the metric over its last K epochs, as the course often
does (metric=train/acc: the training data, where a notebook has no test split). A sweep's
`report` config (report.metric, report.last) sets both for its summary and for this command.
When the jobs repeat two settings (a swept seed), a t-test of the two (scipy's ttest_ind) is
printed and written to ttest.json.
"""


def cmd_report(args: list[str]) -> None:
    if asks_help(args, REPORT_HELP, needs_args=True):
        return
    folder, *rest = args
    opts = parse_pairs(rest, SPECS["report"], "report")
    from dlexp.report import report

    with user_errors():
        report(folder, opts["metric"] or None, plot=opts["plot"] != "false", last=int(opts["last"]))


WEIGHTS_HELP = """usage: dlexp weights <backbone> [weights=DEFAULT] [download=false]

Says whether a torchvision model's pretrained weights are in torch's cache
($TORCH_HOME/hub/checkpoints), with the file name and URL; download=true fetches them.
"""


def cmd_weights(args: list[str]) -> None:
    if asks_help(args, WEIGHTS_HELP, needs_args=True):
        return
    backbone, *rest = args
    opts = parse_pairs(rest, SPECS["weights"], "weights")
    from dlexp.models.transfer import load_weights, weights_enum, weights_file

    with user_errors():
        weights = weights_enum(backbone, opts["weights"])
        if weights is None:
            fail("weights=none has no file; name a weights enum (DEFAULT, IMAGENET1K_V1, ...).")
        path, url = weights_file(weights)
        if opts["download"] == "true" and not path.is_file():
            load_weights(weights, backbone, download=True)
    state = "present" if path.is_file() else "missing"
    print(f"{backbone} {weights}: {state}\n  file: {path}\n  url:  {url}")
    if state == "missing":
        print(
            f"  get it: dlexp weights {backbone} download=true (online), or download the url into that folder"
        )


STYLIZE_HELP = """usage: dlexp stylize [content=<image>] [style=<image>] [other overrides]

Shortcut for `dlexp train experiment=style_transfer data.content=... data.style=...`: paints
the content image in the style of the style image (VGG19 features, Gram matrices). Without
images it uses the built-in demo pair. The result is stylized.png in the run folder.
"""


def cmd_stylize(args: list[str]) -> None:
    if asks_help(args, STYLIZE_HELP):
        return
    renamed = {"content": "data.content", "style": "data.style"}
    overrides = [
        renamed.get(a.partition("=")[0], a.partition("=")[0]) + "=" + a.partition("=")[2]
        if "=" in a
        else a
        for a in args
    ]
    cmd_train(["experiment=style_transfer", *overrides])


SAMPLE_HELP = """usage: dlexp sample run=<run folder or .pt> [n=...] [out=...] [seed=0]
                    [prompt=<text>] [temperature=1.0]

What a trained generative run makes:
  a GAN (model=gan|dcgan)       n images (64) as one PNG grid (out=samples.png)
  a series (data=sine|alternating, model=rnn|lstm|gru)
                                n values (as many as the test split) continued from where the
                                test split starts, each from the net's own previous output,
                                plotted against the data (out=extrapolation.png, values in .json)
  a text (data=text)            n characters (200) after prompt (the text's first character),
                                drawn at temperature (0: the most likely each time), printed and
                                written to out=samples.txt
"""


def cmd_sample(args: list[str]) -> None:
    if asks_help(args, SAMPLE_HELP):
        return
    opts = parse_pairs(args, SPECS["sample"], "sample")
    if not opts["run"]:
        fail("`dlexp sample` needs run=<GAN run folder or checkpoint file>.")
    from dlexp.progress import log_to_console
    from dlexp.sample import sample

    log_to_console()

    with user_errors():
        sample(
            opts["run"],
            int(opts["n"]) if opts["n"] else None,
            opts["out"] or None,
            int(opts["seed"]),
            opts["prompt"] or None,
            float(opts["temperature"]),
        )


COMMANDS = {
    "train": cmd_train,
    "sample": cmd_sample,
    "stylize": cmd_stylize,
    "eval": cmd_eval,
    "data": cmd_data,
    "report": cmd_report,
    "weights": cmd_weights,
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    if argv[0] in ("-V", "--version"):
        from dlexp import __version__

        print(f"dlexp {__version__}")
        return
    if (
        argv[:2] in (["train", "-sc"], ["train", "--shell-completion"])
        and argv[2:3]
        and (argv[2].startswith("install="))
    ):
        argv = argv[1:]  # the script is dlexp's, for every command (the README had Hydra's)
    if argv[0] in ("-sc", "--shell-completion"):  # the completion script asking for words
        if complete(argv[1:]):
            return
        argv = ["train", *argv]  # `dlexp train ...`: Hydra's words
    if os.environ.get("DLEXP_MODULES") and os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())  # the user's own modules, in the folder dlexp runs from
    command = COMMANDS.get(argv[0])
    if command is None:
        fail(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)} (see dlexp --help).")
    command(argv[1:])


def complete(args: list[str]) -> bool:
    """`-sc install=<shell>`: print dlexp's completion script; `-sc query=<shell>`: the words
    for the line in COMP_LINE, unless they are Hydra's (`dlexp train ...`: False)."""
    from dlexp import completion

    option = (args or ["query=bash"])[0]
    kind, _, shell = option.partition("=")
    if kind == "install":
        print(completion.script(shell))
        return True
    done, _ = completion.split(os.environ.get("COMP_LINE", ""))
    if done and done[0] == "train":
        return False
    completion.query(shell, list(COMMANDS), SPECS, POSITIONAL)
    return True


def run() -> None:
    """Console entry point: main(), then exit without the interpreter's teardown.

    Tearing down torch's (and dynamo's) thousands of modules takes about a second after the
    work is done; everything we write is closed or flushed before os._exit.
    """
    import logging

    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if not isinstance(exit_.code, int | None):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:
        code = 130
    except BrokenPipeError:  # `dlexp ... | head` closed its end: nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 141  # 128 + SIGPIPE, as a shell reports it
    if "joblib.externals.loky" in sys.modules:  # its worker cleanup runs at normal exit
        raise SystemExit(code)
    logging.shutdown()
    with contextlib.suppress(BrokenPipeError):
        sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
