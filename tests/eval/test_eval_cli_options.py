"""`clipforge eval --option KEY=VALUE`: dataset loader options from the command line (e.g. a CSV's columns)."""

import json

from clipforge.cli.main import main as cli
from support.noise_images import write_noise_folder


def _csv(tmp_path):
    paths = write_noise_folder(tmp_path / "imgs", classes=2, per_class=3)
    table = tmp_path / "pairs.csv"
    table.write_text("filepath,title\n" + "".join(f"{p},a photo of {p.parent.name}\n" for p in paths))
    return table


def _args(tmp_path, table):
    args = ["eval", "--model", "tiny-vit", "--task", "retrieval", "--dataset", "csv", "--root", str(table)]
    return args + ["--out", str(tmp_path / "out"), "--cache-dir", "none", "--no-plots", "--no-progress", "-q"]


def test_csv_columns_named_on_the_command_line(tmp_path, capsys):
    table = _csv(tmp_path)
    assert cli(_args(tmp_path, table)) == 2  # the default column names (path, caption) are not in this file
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no path column 'path'" in err[0] and "--option path_column=NAME" in err[0], err
    options = ["--option", "path_column=filepath", "--option", "caption_column=title"]
    assert cli([*_args(tmp_path, table), *options]) == 0
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    recalls = [r for r in records if r["task"] == "retrieval" and r["metric"] == "image_to_text_R@10"]
    assert recalls and recalls[0]["value"] == 1.0  # 6 pairs: everything is within the top 10


def test_a_malformed_option_is_a_usage_error(tmp_path, capsys):
    assert cli([*_args(tmp_path, _csv(tmp_path)), "--option", "no-equals-sign"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "expected KEY=VALUE" in err[0]


def test_prompt_files_that_are_not_text_files_are_one_error_naming_them(tmp_path, capsys):
    import os

    paths = write_noise_folder(tmp_path / "imgs", classes=2, per_class=2)
    base = ["eval", "--model", "tiny-vit", "--dataset", "folder", "--root", str(paths[0].parent.parent)]
    base += ["--out", str(tmp_path / "out"), "--cache-dir", "none", "--no-plots", "--no-progress", "-q"]
    fifo = tmp_path / "descriptions.json"
    os.mkfifo(fifo)  # a blocking read of it would never return
    latin1 = tmp_path / "templates.txt"
    latin1.write_bytes("une photo d'un {}.\nun dessin \xe9l\xe9gant d'un {}.\n".encode("latin-1"))
    hierarchy = tmp_path / "hierarchy.json"
    hierarchy.write_text("{not json")
    for flag, path, expected in [
        ("--descriptions", fifo, "not a regular descriptions file"),
        ("--templates", latin1, "line 2 (byte offset 29) is not UTF-8 text"),
        ("--hierarchy", hierarchy, "not valid JSON"),
    ]:
        assert cli([*base, flag, str(path)]) in (2, 3)
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(path) in err[0] and expected in err[0], (flag, err)
