"""maml_tf.paper.glance: the results at a glance, from hand-made manifests."""
import pytest

from maml_tf.paper import glance


def _manifest(mean, ci, reached=None, total=60000, checkpoint=None, column=3):
    m = {"iterations": reached or total, "checkpoint": checkpoint or f"model{(reached or total) - 1}",
         "flags": {"metatrain_iterations": total, "pretrain_iterations": 0},
         "test": {"mean": mean, "ci95": ci, "inner_steps": column}}
    if reached is not None:
        m["run_iterations"] = reached
    return m


def test_status_words():
    paper = (0.987, 0.004)
    assert glance.status(paper, (0.9893, 0.0040), 60000, 60000) == "reproduced"
    assert glance.status(paper, (0.980, 0.002), 60000, 60000) == "outside the paper's interval"
    # Overlapping intervals count; disjoint ones do not.
    assert glance.status(paper, (0.978, 0.006), 60000, 60000) == "reproduced"
    assert glance.status(paper, (0.976, 0.006), 60000, 60000) == "outside the paper's interval"
    assert glance.status(paper, (0.85, 0.01), 15031, 60000) == "short of full length (25%)"
    assert glance.status(None, (0.149, 0.025), 70000, 70000) == "figure only"
    assert glance.status(paper, None, 0, 0, "not started") == "not started"


def test_rows_and_table_from_manifests():
    cells = (glance.Cell("omniglot-5way-1shot", "a"), glance.Cell("omniglot-20way-1shot", "b"),
             glance.Cell("omniglot-20way-5shot", None, "not started: queued"),
             glance.Cell("sinusoid-maml-k10", "s"))
    manifests = {
        # a run that reached its length, tested at the checkpoint selection named (no run_iterations:
        # a manifest of a finished run, as `pretrained list` reads it)
        "a": _manifest(0.9893, 0.0040, checkpoint="model41000") | {"iterations": 41001},
        "b": _manifest(0.8534, 0.0065, reached=15031),
        "s": _manifest(0.149, 0.025, total=70000, column=10),
    }
    rows = glance.rows(manifests, cells)
    assert [r.status for r in rows] == ["reproduced", "short of full length (25%)",
                                        "not started: queued", "figure only"]
    table = glance.markdown(rows).splitlines()
    assert len(table) == 2 + len(cells)
    assert table[2] == ("| Omniglot 5-way 1-shot | 98.7 ± 0.4% | 98.93 ± 0.40% | 60,000 (selected: model41000) "
                        "| `a` | reproduced |")
    assert "| 15,031 of 60,000 | `b` |" in table[3] and "95.8 ± 0.3%" in table[3]
    assert table[4].endswith("| — | — | — | not started: queued |")
    assert "MSE 0.149 ± 0.025 after 10 steps" in table[5] and "Fig. 3" in table[5]
    with pytest.raises(ValueError, match="no published model 'a'"):
        glance.rows({}, cells[:1])


def test_every_cell_names_a_registered_experiment_and_the_published_models_exist():
    rows = glance.rows()  # the real manifests of pretrained/
    assert len(rows) == len(glance.CELLS)
    published = [r for r in rows if r.manifest is not None]
    assert {r.cell.model for r in published} == {c.model for c in glance.CELLS if c.model}


def test_readme_block_is_replaced_in_place():
    text = f"intro\n{glance.BEGIN}\nold table\n{glance.END}\nafter\n"
    new = glance.replace_in(text, "| new |")
    assert new == f"intro\n{glance.BEGIN}\n| new |\n{glance.END}\nafter\n"
    assert glance.block_in(new) == "| new |"
    with pytest.raises(ValueError, match="no .* block"):
        glance.replace_in("no markers", "| t |")


def test_figure_is_written(tmp_path):
    pytest.importorskip("matplotlib")
    from maml_tf.paper.figures import pyplot
    path = glance.figure(glance.rows(), str(tmp_path / "glance.png"), pyplot)
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_figures_command_updates_the_readme_table(tmp_path):
    pytest.importorskip("matplotlib")
    from maml_tf.paper import figures
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n{glance.BEGIN}\nstale\n{glance.END}\n")
    lines = []
    figures.glance(str(tmp_path / "out"), str(readme), out=lines.append)
    assert glance.block_in(readme.read_text()) == glance.markdown(glance.rows())
    assert (tmp_path / "out" / "results_at_a_glance.png").is_file()
    assert lines[-1].startswith("Updated the table")
    readme.write_text("# no markers\n")
    assert figures.main(["--glance", "--out", str(tmp_path / "out"), "--readme", str(readme)]) == 2
    assert readme.read_text() == "# no markers\n"  # nothing lost
