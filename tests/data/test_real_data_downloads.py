"""Official downloads as they unpack (issue 18, items 3 to 7): Cityscapes' label-less test split is refused,
gtCoarse is read on request (and the fine loader says so), BDD100K's unpaired files are counted with the
switch that keeps the paired scenes, ADE20K uses the official names, and the layout fixtures hold the
extra files real downloads hold."""
import json

import numpy as np
import pytest
from PIL import Image

from amlight.cli.main import main
from amlight.data.check import check_dataset
from amlight.data.datamodule import ExemplarPairDataModule
from amlight.data.io import DataFileError
from amlight.data.layout_fixtures import write_layout_fixture
from amlight.data.registry import build_dataset

SMALL = (64, 128)  # (height, width)


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    write_layout_fixture("cityscapes", root, num_train=2, num_val_groups=1, size=SMALL, coarse=True)
    return root


@pytest.fixture
def bdd(tmp_path):
    root = tmp_path / "bdd100k"
    write_layout_fixture("bdd100k", root, num_train=3, num_val_groups=1, size=SMALL)
    return root


# --- item 7: the fixtures are real trees ---------------------------------------------------------


def test_cityscapes_fixture_holds_the_archives_extra_files_and_a_test_split(cityscapes):
    for split in ("train", "val", "test"):
        folder = cityscapes / "gtFine" / split / "amlight"
        stems = {p.name.rsplit("_gtFine_", 1)[0] for p in folder.iterdir()}
        for stem in stems:
            for suffix in ("color.png", "instanceIds.png", "labelIds.png", "polygons.json"):
                assert (folder / f"{stem}_gtFine_{suffix}").is_file(), (split, stem, suffix)
            assert (cityscapes / "leftImg8bit" / split / "amlight" / f"{stem}_leftImg8bit.png").is_file()
    sample = cityscapes / "gtFine/train/amlight/amlight_000000_000000_gtFine"
    assert Image.open(f"{sample}_color.png").mode == "RGB"
    instances = np.array(Image.open(f"{sample}_instanceIds.png"))
    assert instances.max() >= 24000  # things as labelId * 1000 + k, as in the real files
    assert json.loads(open(f"{sample}_polygons.json").read())["objects"]
    test_labels = np.array(Image.open(cityscapes / "gtFine/test/amlight/amlight_000000_001000_gtFine_labelIds.png"))
    assert set(np.unique(test_labels)) == {0}  # placeholders: no class anywhere
    for split in ("train", "val", "train_extra"):
        assert list((cityscapes / "gtCoarse" / split / "amlight").glob("*_gtCoarse_labelIds.png"))
    assert list((cityscapes / "leftImg8bit/train_extra/amlight").glob("*_leftImg8bit.png"))


def test_the_extra_files_do_not_change_what_cityscapes_reads(cityscapes):
    for split, count in (("train", 2), ("val", 2)):
        source = build_dataset("cityscapes", cityscapes, split)
        assert len(source) == count
        assert all(s.label_path.name.endswith("_gtFine_labelIds.png") for s in source.scenes)


def test_bdd100k_fixture_holds_colormaps_polygons_rles_and_an_image_only_test_split(bdd):
    sem = bdd / "labels" / "sem_seg"
    for split in ("train", "val"):
        masks = sorted(p.name for p in (sem / "masks" / split).iterdir())
        assert sorted(p.name for p in (sem / "colormaps" / split).iterdir()) == masks
        for kind in ("polygons", "rles"):
            frames = json.loads((sem / kind / f"sem_seg_{split}.json").read_text())["frames"]
            assert len(frames) == len(masks)
        assert len(build_dataset("bdd100k", bdd, split)) == len(masks)
    assert list((bdd / "images/10k/test").glob("*.jpg")) and not (sem / "masks" / "test").exists()
    assert Image.open(next((sem / "colormaps" / "train").iterdir())).mode == "RGB"


# --- item 3: Cityscapes' test split ------------------------------------------------------------------


def test_cityscapes_test_split_is_refused_for_training_and_retrieval(cityscapes, tmp_path, capsys):
    with pytest.raises(DataFileError, match=r"'test' split has no public labels.*training or retrieval"):
        build_dataset("cityscapes", cityscapes, "test")
    dm = ExemplarPairDataModule(dataset="cityscapes", root=str(cityscapes), val_split="test", batch_size=2)
    with pytest.raises(DataFileError, match="no public labels"):
        dm.setup("validate")
    code = main(["retrieve", "--data", "cityscapes", "--root", str(cityscapes), "--split", "test",
                 "--out", str(tmp_path / "r.json"), "--no-progress"])
    assert code != 0 and "no public labels" in capsys.readouterr().err


def test_data_check_says_the_cityscapes_test_split_is_not_read(cityscapes, capsys):
    report = check_dataset("cityscapes", root=cityscapes)
    assert set(report.counts) == {"train", "val"} and "test" in report.split_notes
    assert main(["data", "check", "cityscapes", "--root", str(cityscapes)]) == 0
    out = capsys.readouterr().out
    assert "Splits on disk that are not read" in out and "test: the official Cityscapes 'test' split" in out


# --- item 4: gtCoarse --------------------------------------------------------------------------------


def test_gtcoarse_is_read_as_an_option_and_by_name(cityscapes):
    for split in ("train", "val", "train_extra"):
        source = build_dataset("cityscapes", cityscapes, split, annotations="coarse")
        named = build_dataset("cityscapes_coarse", cityscapes, split)
        assert len(source) == len(named) == 2
        assert all(s.label_path.name.endswith("_gtCoarse_labelIds.png") for s in source.scenes)
        labels = source.load(0)[1]
        assert (labels == 255).any() and set(np.unique(labels)) - {255} <= set(range(19))
    dm = ExemplarPairDataModule(dataset="cityscapes", root=str(cityscapes), train_split="train_extra",
                                dataset_options={"annotations": "coarse"}, batch_size=2, resolution=16)
    dm.setup("fit")
    assert len(dm.train_set) == 2


def test_fine_annotations_on_train_extra_say_coarse_labels_are_not_read(cityscapes, tmp_path):
    with pytest.raises(DataFileError) as info:
        build_dataset("cityscapes", cityscapes, "train_extra")
    message = str(info.value)
    assert "coarse labels only" in message and "annotations: coarse" in message
    assert "gtFine_trainvaltest" not in message
    # without gtCoarse on disk: the message names the archive that has train_extra's labels
    bare = tmp_path / "bare"
    (bare / "leftImg8bit/train_extra/x").mkdir(parents=True)
    (bare / "gtFine/train").mkdir(parents=True)
    with pytest.raises(DataFileError) as info:
        build_dataset("cityscapes", bare, "train_extra")
    assert "gtCoarse.zip" in str(info.value) and "gtFine_trainvaltest" not in str(info.value)
    report = check_dataset("cityscapes", root=cityscapes)
    assert "coarse labels only" in report.split_notes["train_extra"]


# --- item 5: older BDD100K zips with unpaired files -----------------------------------------------------


def _make_unpaired(bdd):
    masks = sorted((bdd / "labels/sem_seg/masks/train").iterdir())
    images = sorted((bdd / "images/10k/train").iterdir())
    masks[0].unlink()  # an image without a mask
    images[1].unlink()  # a mask without an image


def test_bdd100k_unpaired_files_are_counted_with_the_switch_that_keeps_the_paired_scenes(bdd):
    _make_unpaired(bdd)
    with pytest.raises(DataFileError) as info:
        build_dataset("bdd100k", bdd, "train")
    message = str(info.value)
    assert "1 images without a mask" in message and "1 masks without an image" in message
    assert "dataset_options: {strict: false}" in message
    assert "the 1 paired scenes and drop these 2 files" in message
    source = build_dataset("bdd100k", bdd, "train", strict=False)
    assert len(source) == 1 and len(source.problems) == 2


def test_bdd100k_strict_false_trains_on_the_paired_scenes_and_says_what_it_dropped(bdd):
    _make_unpaired(bdd)
    dm = ExemplarPairDataModule(dataset="bdd100k", root=str(bdd), dataset_options={"strict": False},
                                batch_size=1, resolution=16)
    dm.setup("fit")
    assert len(dm.train_set) == 1
    note = dm.dropped_notes["train"]
    assert "2 unpaired file(s) left out" in note and "using its 1 paired scenes" in note and note in dm.notes


# --- item 6: ADE20K's official names -------------------------------------------------------------------

# objectInfo150.csv (sceneparsing), Name column: the csv writes spaces and synonyms alike as ';'.
OBJECT_INFO_150 = """wall|building;edifice|sky|floor;flooring|tree|ceiling|road;route|bed|windowpane;window|grass|
cabinet|sidewalk;pavement|person;individual;someone;somebody;mortal;soul|earth;ground|door;double;door|table|
mountain;mount|plant;flora;plant;life|curtain;drape;drapery;mantle;pall|chair|car;auto;automobile;machine;motorcar|
water|painting;picture|sofa;couch;lounge|shelf|house|sea|mirror|rug;carpet;carpeting|field|armchair|seat|
fence;fencing|desk|rock;stone|wardrobe;closet;press|lamp|bathtub;bathing;tub;bath;tub|railing;rail|cushion|
base;pedestal;stand|box|column;pillar|signboard;sign|chest;of;drawers;chest;bureau;dresser|counter|sand|sink|
skyscraper|fireplace;hearth;open;fireplace|refrigerator;icebox|grandstand;covered;stand|path|stairs;steps|runway|
case;display;case;showcase;vitrine|pool;table;billiard;table;snooker;table|pillow|screen;door;screen|
stairway;staircase|river|bridge;span|bookcase|blind;screen|coffee;table;cocktail;table|
toilet;can;commode;crapper;pot;potty;stool;throne|flower|book|hill|bench|countertop|
stove;kitchen;stove;range;kitchen;range;cooking;stove|palm;palm;tree|kitchen;island|
computer;computing;machine;computing;device;data;processor;electronic;computer;information;processing;system|
swivel;chair|boat|bar|arcade;machine|hovel;hut;hutch;shack;shanty|
bus;autobus;coach;charabanc;double-decker;jitney;motorbus;motorcoach;omnibus;passenger;vehicle|towel|
light;light;source|truck;motortruck|tower|chandelier;pendant;pendent|awning;sunshade;sunblind|
streetlight;street;lamp|booth;cubicle;stall;kiosk|
television;television;receiver;television;set;tv;tv;set;idiot;box;boob;tube;telly;goggle;box|
airplane;aeroplane;plane|dirt;track|apparel;wearing;apparel;dress;clothes|pole|land;ground;soil|
bannister;banister;balustrade;balusters;handrail|escalator;moving;staircase;moving;stairway|
ottoman;pouf;pouffe;puff;hassock|bottle|buffet;counter;sideboard|poster;posting;placard;notice;bill;card|stage|
van|ship|fountain|conveyer;belt;conveyor;belt;conveyer;conveyor;transporter|canopy|
washer;automatic;washer;washing;machine|plaything;toy|swimming;pool;swimming;bath;natatorium|stool|barrel;cask|
basket;handbasket|waterfall;falls|tent;collapsible;shelter|bag|minibike;motorbike|cradle|oven|ball|food;solid;food|
step;stair|tank;storage;tank|trade;name;brand;name;brand;marque|microwave;microwave;oven|pot;flowerpot|
animal;animate;being;beast;brute;creature;fauna|bicycle;bike;wheel;cycle|lake|
dishwasher;dish;washer;dishwashing;machine|screen;silver;screen;projection;screen|blanket;cover|sculpture|
hood;exhaust;hood|sconce|vase|traffic;light;traffic;signal;stoplight|tray|
ashcan;trash;can;garbage;can;wastebin;ash;bin;ash-bin;ashbin;dustbin;trash;barrel;trash;bin|fan|
pier;wharf;wharfage;dock|crt;screen|plate|monitor;monitoring;device|bulletin;board;notice;board|shower|radiator|
glass;drinking;glass|clock|flag"""


def test_ade20k_class_names_are_the_official_first_names():
    from amlight.data.datasets.ade20k import CLASS_NAMES

    rows = [row for row in OBJECT_INFO_150.replace("\n", "").split("|")]
    assert len(rows) == len(CLASS_NAMES) == 150
    assert CLASS_NAMES[89] == "television"
    for index, (name, row) in enumerate(zip(CLASS_NAMES, rows)):
        words = name.split(" ")
        assert row.split(";")[: len(words)] == words, (index, name, row)  # the row starts with the name


def test_data_check_counts_unpaired_files_and_names_the_switch(bdd, capsys):
    _make_unpaired(bdd)
    assert main(["data", "check", "bdd100k", "--root", str(bdd), "--batch-size", "1"]) == 1
    out = capsys.readouterr().out
    assert "split 'train': fit refuses its 2 unpaired file(s); dataset_options: {strict: false}" in out
    assert "keeps its 1 paired scenes" in out


def test_ade20k_unpaired_files_name_the_switch_too(tmp_path):
    ade = tmp_path / "ADEChallengeData2016"
    for sub in ("images/training", "annotations/training"):
        (ade / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ade / "images/training/a.jpg")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(ade / "images/training/b.jpg")
    Image.fromarray(np.ones((8, 8), np.uint8)).save(ade / "annotations/training/a.png")
    with pytest.raises(DataFileError, match=r"1 images without an annotation .*the 1 paired scenes.*strict: false"):
        build_dataset("ade20k", tmp_path, "train")
    assert len(build_dataset("ade20k", tmp_path, "train", strict=False)) == 1
