"""The app's logic functions (amlight/apps/app_logic.py), called directly on a tiny random-weight model."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from amlight.apps import app_logic as A
from amlight.apps.inputs import LabelSpace
from helpers.app_scenes import scene_labels, tiny_checkpoints, write_scene


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("app_model"))


@pytest.fixture(scope="module")
def model(checkpoints):
    s1, adapter = checkpoints
    pipe, space = A.load_model(stage1=s1, adapter=adapter, data="synthetic")
    return pipe, space


@pytest.fixture(scope="module")
def space():
    return LabelSpace.resolve("synthetic")


def test_paint_brush_sets_a_disc_of_the_class_and_nothing_else():
    labels = scene_labels()
    painted = A.paint_brush(labels, 5, [(4, 4)], radius=2, num_classes=10)
    changed = painted != labels
    assert int(painted[4, 4]) == 5 and int(painted[4, 6]) == 5 and int(painted[4, 7]) == 0
    assert changed.sum() == 13  # a radius-2 disc on sky
    assert torch.equal(labels, scene_labels())  # a copy
    with pytest.raises(A.AppInputError, match="outside the model's classes"):
        A.paint_brush(labels, 12, [(4, 4)], 1, num_classes=10)


def test_paint_layer_maps_an_editor_stroke_of_another_size_onto_the_labels():
    labels = scene_labels()
    layer = np.zeros((64, 64, 4), np.uint8)
    layer[0:16, 0:16, 3] = 255  # the top-left quarter of the shown (4x) picture
    painted = A.paint_layer(labels, 6, layer, num_classes=10)
    assert (painted[:4, :4] == 6).all() and int((painted == 6).sum()) == 16


def test_connected_region_picks_only_the_clicked_car():
    labels = scene_labels()
    left = A.connected_region(labels, (11, 3))
    assert int(left.sum()) == 9 and bool(left[10, 2]) and not bool(left[11, 11])
    road = A.connected_region(labels, (15, 0))
    assert bool(road[8, 8]) and not bool(road[11, 3])
    assert A.click_to_pixel((30, 60), shown=(128, 128), size=(16, 16)) == (7, 3)


def test_links_tie_each_region_only_to_its_partner():
    exemplar, target = scene_labels(), scene_labels().flip(-1)
    links = [A.Link(A.connected_region(exemplar, (11, 3)), A.connected_region(target, (11, 3)))]
    t_match, x_match = A.build_links(links, target, exemplar, num_classes=10)
    assert set(torch.unique(x_match[links[0].exemplar]).tolist()) == {10}
    assert set(torch.unique(t_match[links[0].target]).tolist()) == {10}
    assert int(x_match[11, 11]) == 5  # the other car keeps its class
    with pytest.raises(A.AppInputError, match="no link yet"):
        A.build_links([], target, exemplar, 10)
    drawn = A.draw_links(np.zeros((16, 16, 3), np.uint8), [links[0].exemplar], scale=4)
    assert drawn.shape == (64, 64, 3) and drawn.any()


def test_uploads_with_bad_colours_size_or_bytes_give_one_line_errors(tmp_path, space):
    image, labels = write_scene(tmp_path, space.metadata)
    got = A.read_labels(labels, space, (16, 16), "exemplar label map", image_shape=A.image_shape(image))
    assert torch.equal(got, scene_labels())
    off = np.asarray(Image.open(labels)).copy()
    off[0, 0] = (1, 2, 3)
    Image.fromarray(off).save(tmp_path / "off.png")
    with pytest.raises(A.AppInputError) as e:
        A.read_labels(tmp_path / "off.png", space, (16, 16), "target label map")
    assert "off.png" in str(e.value) and "\n" not in str(e.value)
    Image.fromarray(np.asarray(Image.open(labels))[:8]).save(tmp_path / "half.png")
    with pytest.raises(A.AppInputError, match="half.png is 16x8 but its image is 16x16"):
        A.read_labels(tmp_path / "half.png", space, (16, 16), image_shape=A.image_shape(image))
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(A.AppInputError, match="bad.png: not a readable image"):
        A.read_image(tmp_path / "bad.png", (16, 16), "exemplar image")
    with pytest.raises(A.AppInputError, match="bad.png"):
        A.read_labels(tmp_path / "bad.png", space, (16, 16))


def test_label_maps_show_in_the_dataset_colours_with_a_legend(space):
    shown = A.show_labels(scene_labels(), space)
    assert tuple(shown[0, 0]) == tuple(space.metadata.colors[0]) and tuple(shown[11, 3]) == tuple(space.metadata.colors[5])
    legend = A.legend_html(space, [scene_labels()])
    assert "car" in legend and "sky" in legend and legend.count("opacity:0.4") == 7


def test_generate_caches_banks_per_exemplar_and_reports_progress(model):
    pipe, space = model
    image, labels = torch.rand(3, 16, 16) * 2 - 1, scene_labels()
    cache, steps = A.BankCache(), []
    settings = A.Settings(mode="augmented", steps=2, seed=1)
    out = A.generate(pipe, cache, image, labels, labels, settings, on_step=lambda i, n: steps.append((i, n)))
    assert out.shape == (3, 16, 16) and steps == [(1, 2), (2, 2)] and cache.builds == 1
    # Another target, mode and guidance: the same banks (no new inversion).
    edited = A.paint_brush(labels, 5, [(4, 8)], 2, 10)
    again = A.generate(pipe, cache, image, labels, edited, A.Settings(mode="hard_mask", steps=2, guidance=2.0, seed=1))
    assert cache.builds == 1 and not torch.equal(again, out)
    # Same call, same picture; another exemplar or scheduler: a new inversion.
    assert torch.equal(A.generate(pipe, cache, image, labels, labels, settings), out)
    A.generate(pipe, cache, image.flip(-1), labels, labels, settings)
    A.generate(pipe, cache, image, labels, labels, A.Settings(mode="augmented", steps=2, scheduler="euler", seed=1))
    assert cache.builds == 3
    with pytest.raises(A.AppInputError, match="unknown scheduler"):
        A.generate(pipe, cache, image, labels, labels, A.Settings(scheduler="nope"))


def test_linked_generation_uses_the_match_labels(model):
    pipe, _ = model
    image, exemplar = torch.rand(3, 16, 16) * 2 - 1, scene_labels()
    target = exemplar.flip(-1)
    links = [A.Link(A.connected_region(exemplar, (11, 3)), A.connected_region(target, (11, 3)))]
    t_match, x_match = A.build_links(links, target, exemplar, pipe.num_classes)
    cache = A.BankCache()
    settings = A.Settings(mode="hard_mask", steps=2)
    plain = A.generate(pipe, cache, image, exemplar, target, settings)
    linked = A.generate(pipe, cache, image, exemplar, target, settings, target_match=t_match, exemplar_match=x_match)
    assert cache.builds == 2 and not torch.equal(plain, linked)


def test_look_shows_attention_per_mode_and_layer_group(model):
    pipe, space = model
    image, labels = torch.rand(3, 16, 16) * 2 - 1, scene_labels()
    figure, shares = A.look(pipe, space, image, labels, labels, (11, 3), modes=["augmented", "hard_mask"])
    assert set(shares) == {"augmented", "hard_mask"} and set(shares["augmented"]) == {"down", "mid", "up"}
    # hard_mask lets a car read only exemplar cars: all of its exemplar attention lands on its class.
    assert all(v == pytest.approx(1.0, abs=1e-4) for v in shares["hard_mask"].values())
    assert all(v < 0.99 for v in shares["augmented"].values())
    assert figure.width > 5 * 16 * 4 and figure.height > 3 * 16 * 4
    with pytest.raises(A.AppInputError, match="outside the 16x16 target"):
        A.look(pipe, space, image, labels, labels, (16, 0))


def test_load_model_names_a_folder_that_is_not_a_pipeline(tmp_path):
    with pytest.raises(A.AppInputError, match="not a pipeline folder"):
        A.load_model(pipeline=tmp_path)
    with pytest.raises(A.AppInputError, match="no such file"):
        A.load_model(stage1=tmp_path / "missing.ckpt")


def test_load_model_from_a_pipeline_folder_reads_its_label_space(checkpoints, tmp_path):
    from amlight.cli.commands.export import export

    folder, _ = export(str(checkpoints[0]), tmp_path / "pipe", adapter=str(checkpoints[1]), data="synthetic")
    pipe, space = A.load_model(pipeline=folder)
    assert space.metadata.class_names == LabelSpace.resolve("synthetic").metadata.class_names
    assert pipe.adapter is not None and "adapter" in A.available_modes(pipe)
    image = A.generate(pipe, A.BankCache(), torch.zeros(3, 16, 16), scene_labels(), scene_labels(),
                       A.Settings(mode="augmented", steps=1))
    assert image.shape == (3, 16, 16)


def test_app_command_says_in_one_line_what_is_missing(tmp_path, monkeypatch, capsys):
    from amlight.cli.main import main

    monkeypatch.chdir(tmp_path)  # no runs/quickstart here
    assert A.default_model_paths() == {}
    assert main(["app"]) == 2
    assert "no model: give --pipeline DIR" in capsys.readouterr().err
    assert main(["app", "--pipeline", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a pipeline folder" in err and len(err.splitlines()) == 1
    assert main(["app", "--pipeline", str(tmp_path), "--stage1", "x.ckpt"]) == 2
    (tmp_path / "runs/quickstart/stage1/checkpoints").mkdir(parents=True)
    (tmp_path / "runs/quickstart/stage2/checkpoints").mkdir(parents=True)
    (tmp_path / A.QUICKSTART_STAGE1).write_bytes(b"")
    (tmp_path / A.QUICKSTART_STAGE2).write_bytes(b"")
    found = A.default_model_paths()
    assert found == {"stage1": Path(A.QUICKSTART_STAGE1), "adapter": Path(A.QUICKSTART_STAGE2)}


def test_modes_side_by_side_draws_every_mode_the_model_has(model):
    pipe, _ = model
    cache = A.BankCache()
    pictures = A.modes_side_by_side(pipe, cache, torch.rand(3, 16, 16) * 2 - 1, scene_labels(), scene_labels(),
                                    A.Settings(steps=1))
    assert [m for _, m in pictures] == A.available_modes(pipe) and len(pictures) == 4
    assert all(p.shape == (16, 16, 3) and p.dtype == np.uint8 for p, _ in pictures)
    assert cache.builds == 1  # one inversion serves every mode
