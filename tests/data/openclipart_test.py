"""Openclipart: metadata, captions, rendering and the TFDS builder.

The builder runs on a tiny tree written here in the Debian package's layout
and metadata format (<category>/.../*.svg with a Dublin Core cc:Work), so
only rsvg-convert (librsvg2-bin) is needed; one slow test prepares the real
package when it is installed.
"""
import os
import pathlib
import shutil

from absl import logging
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import REPO
from mrl_jax import config_lib
from mrl_jax.data import captioned_images
from mrl_jax.data import image_text
from mrl_jax.data import openclipart
from mrl_jax.data import pipeline
from mrl_jax.data import preprocess
from mrl_jax.data import tokenizer as tok
from mrl_jax.errors import RunError

needs_rsvg = pytest.mark.skipif(shutil.which("rsvg-convert") is None,
                                reason="rsvg-convert (librsvg2-bin) missing")

_SVG = """<?xml version="1.0" encoding="UTF-8" standalone="no"?>
<!-- Created with Inkscape (http://www.inkscape.org/) -->
<svg xmlns:dc="http://purl.org/dc/elements/1.1/"
     xmlns:cc="http://web.resource.org/cc/"
     xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"
     xmlns:svg="http://www.w3.org/2000/svg"
     xmlns="http://www.w3.org/2000/svg"
     width="{width}" height="{height}" id="svg2" version="1.0">
  <metadata>
    <rdf:RDF xmlns:cc="http://web.resource.org/cc/"
        xmlns:dc="http://purl.org/dc/elements/1.1/"
        xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
      <cc:Work rdf:about="">
        <dc:title>{title}</dc:title>
        <dc:description>{description}</dc:description>
        <dc:subject>
          <rdf:Bag>
{keywords}
          </rdf:Bag>
        </dc:subject>
        <dc:publisher>
          <cc:Agent rdf:about="http://www.openclipart.org/">
            <dc:title>Open Clip Art Library</dc:title>
          </cc:Agent>
        </dc:publisher>
        <dc:creator>
          <cc:Agent>
            <dc:title>Test Author</dc:title>
          </cc:Agent>
        </dc:creator>
        <dc:format>image/svg+xml</dc:format>
        <dc:type rdf:resource="http://purl.org/dc/dcmitype/StillImage"/>
        <cc:license rdf:resource="http://web.resource.org/cc/PublicDomain"/>
      </cc:Work>
    </rdf:RDF>
  </metadata>
  {body}
</svg>
"""
_COLORS = ("red", "green", "blue", "orange", "purple", "black", "brown")


def write_svg(path: pathlib.Path, title: str, keywords=(), description="",
              body: str | None = None, width: int = 200,
              height: int = 100) -> None:
  """An SVG file laid out like the package's, with one coloured shape."""
  color = _COLORS[len(title) % len(_COLORS)]
  if body is None:
    body = (f'<rect x="10" y="10" width="{width - 20}" height="{height - 20}"'
            f' fill="{color}"/>')
  items = "\n".join(f"            <rdf:li>{k}</rdf:li>" for k in keywords)
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(_SVG.format(title=title, description=description,
                              keywords=items, body=body, width=width,
                              height=height))


# (path, title, keywords, description)
_DRAWINGS = [
    ("animals/mammals/dog_01.svg", "Dog", ("mammal", "animal"), ""),
    ("animals/mammals/cat_01.svg", "Clipart by Ann Other - sitting_cat",
     ("mammal", "", "hash(0x866e640)", "cat"), "A cat that sits down."),
    ("animals/birds/owl.svg", "owl", ("bird", "owl", "bird", "7"), ""),
    ("food/fruit/apple.svg", "Apple", ("fruit", "food"), "apple"),
    ("food/pear.svg", "pear", ("fruit",), "A green pear on a table"),
    ("plants/tree.svg", "tree", ("plant", "unsorted"), ""),
    ("transportation/car.svg", "Red Car", ("car", "transport"), ""),
    ("transportation/bus.svg", "bus", ("transport",), ""),
    ("tools/hammer.svg", "hammer", ("tool",), ""),
    ("people/man.svg", "stick man", ("people",), ""),
    ("office/pen.svg", "pen", ("office",), ""),
    ("buildings/house.svg", "house", ("home",), ""),
    ("geography/globe.svg", "globe", ("map",), ""),
    ("recreation/ball.svg", "ball", ("sports",), ""),
    ("education/book.svg", "Book", ("book",), ""),
    ("science/flask.svg", "flask", ("lab",), ""),
] + [(f"shapes/stars/star_{i:02d}.svg", "gramastar",
      ("stars", "shapes", "geometry"), "") for i in range(6)]
# Written but not read, or skipped with a logged reason.
_NOT_READ = {
    "computer/icons/flat/ok.svg": "excluded folder",
    "loose.svg": "not in a category folder",
    "signs_and_symbols/broken.svg": "not well-formed XML",
    "signs_and_symbols/not_svg.svg": "rsvg-convert failed",
    "signs_and_symbols/empty.svg": "renders blank",
    "special/untitled.svg": "no caption",
}


@pytest.fixture(name="svg_tree", scope="module")
def fixture_svg_tree(tmp_path_factory) -> pathlib.Path:
  root = tmp_path_factory.mktemp("openclipart") / "svg"
  for path, title, keywords, description in _DRAWINGS:
    write_svg(root / path, title, keywords, description)
  write_svg(root / "computer/icons/flat/ok.svg",
            "Part of the Flat Icon Collection", ("icons",))
  write_svg(root / "loose.svg", "loose", ("x",))
  (root / "signs_and_symbols").mkdir(parents=True)
  (root / "signs_and_symbols/broken.svg").write_text("<svg><metadata>")
  # Well-formed, with metadata, but not an SVG document.
  not_svg = root / "signs_and_symbols/not_svg.svg"
  write_svg(not_svg, "not svg", ("sign",))
  not_svg.write_text(not_svg.read_text().replace("<svg ", "<notsvg ").replace(
      "</svg>", "</notsvg>"))
  write_svg(root / "signs_and_symbols/empty.svg", "empty", ("blank",),
            body="")
  write_svg(root / "special/untitled.svg", "", ("", "unsorted"))
  # A second category's link to a drawing, as the package has.
  os.symlink("../animals/mammals/dog_01.svg", root / "people/dog_link.svg")
  return root


def test_read_metadata_of_package_format(svg_tree):
  title, keywords, description = openclipart.read_metadata(
      (svg_tree / "animals/mammals/cat_01.svg").read_bytes())
  assert title == "Clipart by Ann Other - sitting_cat"
  assert keywords == ("mammal", "", "hash(0x866e640)", "cat")
  assert description == "A cat that sits down."


def test_caption_template():
  def caption(title, keywords=(), description=""):
    return openclipart.caption(openclipart.Drawing(
        "a/b.svg", "animals", title, tuple(keywords), description))
  assert caption("Clipart by Ann Other - sitting_cat",
                 ("mammal", "", "hash(0x866e640)", "cat", "Mammal", "12",
                  "unsorted", "sitting cat"), "A cat that sits down.") == (
                      "sitting cat. keywords: mammal, cat. A cat that sits "
                      "down")
  assert caption("Apple", ("fruit",), "apple") == "Apple. keywords: fruit"
  assert caption("Apple", (), "red apple") == "Apple"  # < 3 words
  assert caption("", ("fruit", "food")) == "keywords: fruit, food"
  assert caption("", ("", "unsorted"), "no") == ""


def test_title_key_joins_numbered_variants():
  assert openclipart.title_key("Arrow 3") == openclipart.title_key(
      "arrow_07") == "arrow"
  assert openclipart.title_key("Clipart by X Y - baloon1_04") == "baloon"


def test_at_most_per_title_keeps_a_hashed_choice():
  drawings = [openclipart.Drawing(f"s/{i}.svg", "shapes", "star", (), "")
              for i in range(10)] + [
                  openclipart.Drawing("s/moon.svg", "shapes", "moon", (), "")]
  kept = openclipart.at_most_per_title(drawings, 3)
  assert len(kept) == 4 and kept[-1].path == "s/moon.svg"
  assert kept == sorted(kept, key=drawings.index)  # input order
  assert openclipart.at_most_per_title(drawings, None) == drawings


def test_read_drawings_skips_and_logs(svg_tree, monkeypatch):
  warnings = []  # every skip line: per file (INFO) and the count (WARNING)
  for level in ("info", "warning"):
    monkeypatch.setattr(logging, level,
                        lambda msg, *args: warnings.append(msg % args))
  drawings = openclipart.read_drawings(svg_tree)
  paths = {d.path for d in drawings}
  assert "animals/mammals/dog_01.svg" in paths
  assert not paths & {"computer/icons/flat/ok.svg", "loose.svg",
                      "people/dog_link.svg", "signs_and_symbols/broken.svg"}
  assert any("loose.svg (not in a category folder" in w for w in warnings)
  assert any("broken.svg (not well-formed XML" in w for w in warnings)
  assert any("skipped 2 of" in w for w in warnings)


@needs_rsvg
def test_render_fits_aspect_on_white(svg_tree):
  image = openclipart.render(svg_tree / "animals/mammals/dog_01.svg", 32)
  assert image.shape == (32, 32, 3) and image.dtype == np.uint8
  # A 2:1 drawing: white bands above and below, the rectangle inside (orange,
  # write_svg's colour for "Dog").
  assert (image[:7] == 255).all() and (image[-7:] == 255).all()
  assert tuple(image[16, 16]) == (255, 165, 0)


@needs_rsvg
@pytest.mark.parametrize("name,reason", [("not_svg", "rsvg-convert failed"),
                                         ("empty", "renders blank")])
def test_render_refuses_bad_svg(svg_tree, name, reason):
  with pytest.raises(ValueError, match=reason):
    openclipart.render(svg_tree / f"signs_and_symbols/{name}.svg", 16)


def test_missing_package_or_renderer_is_one_line(tmp_path, monkeypatch):
  with pytest.raises(RunError, match="install the Debian package "
                     "openclipart-svg"):
    openclipart.check_sources(tmp_path / "nothing")
  monkeypatch.setattr(shutil, "which", lambda name: None)
  with pytest.raises(RunError, match="install the Debian package "
                     "librsvg2-bin"):
    openclipart.check_sources(tmp_path)


def _small_config(**fields):
  return openclipart.OpenclipartConfig(
      name="test", image_size=16, max_per_title=4, vocab_size=60,
      seq_len=40, validation_fraction=0.3, test_fraction=0.3, **fields)


@pytest.fixture(name="builder", scope="module")
def fixture_builder(svg_tree, tmp_path_factory):
  if shutil.which("rsvg-convert") is None:
    pytest.skip("rsvg-convert (librsvg2-bin) missing")
  builder = openclipart.Openclipart(
      config=_small_config(), svg_dir=svg_tree,
      data_dir=tmp_path_factory.mktemp("tfds"))
  builder.download_and_prepare()
  return builder


def _examples(builder, split):
  return list(builder.as_dataset(split=split).as_numpy_iterator())


def test_builder_features_and_counts(builder):
  splits = builder.info.splits
  total = sum(splits[s].num_examples for s in splits)
  # 16 drawings + 4 of the 6 stars; the bad files are skipped.
  assert total == 20
  assert set(splits) == set(captioned_images.SPLITS)
  example = _examples(builder, "train")[0]
  assert example["image"].shape == (16, 16, 3)
  assert example["image"].dtype == np.uint8
  assert example["input_ids"].shape == (40,)
  assert example["input_ids"].dtype == np.int32
  assert example["input_ids"][0] == tok.CLS_ID
  names = builder.info.features["label"].names
  assert tuple(names) == openclipart.CATEGORIES and len(names) == 22


def test_builder_examples_match_their_sources(builder):
  by_id = {ex["id"].decode(): ex for s in captioned_images.SPLITS
           for ex in _examples(builder, s)}
  dog = by_id["animals/mammals/dog_01.svg"]
  assert dog["caption"].decode() == "Dog. keywords: mammal, animal"
  assert dog["label"] == openclipart.CATEGORIES.index("animals")
  tokenizer = captioned_images.load_tokenizer(builder)
  assert tokenizer.decode(dog["input_ids"]) == "Dog. keywords: mammal, animal"
  assert not set(by_id) & set(_NOT_READ) and "people/dog_link.svg" not in by_id


def test_no_caption_or_title_in_two_splits(builder):
  captions, keys = {}, {}
  for split in captioned_images.SPLITS:
    examples = _examples(builder, split)
    assert examples, split
    captions[split] = {ex["caption"].decode() for ex in examples}
    keys[split] = {openclipart.title_key(ex["caption"].decode().split(".")[0])
                   for ex in examples}
  for a, b in (("train", "validation"), ("train", "test"),
               ("validation", "test")):
    assert not captions[a] & captions[b], (a, b)
    assert not keys[a] & keys[b], (a, b)


def test_prepare_is_deterministic(builder, svg_tree, tmp_path):
  again = openclipart.Openclipart(config=_small_config(), svg_dir=svg_tree,
                                  data_dir=tmp_path, processes=1)
  again.download_and_prepare()
  assert (captioned_images.load_tokenizer(again).model_proto ==
          captioned_images.load_tokenizer(builder).model_proto)
  for split in captioned_images.SPLITS:
    for a, b in zip(_examples(builder, split), _examples(again, split),
                    strict=True):
      for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_builder_logs_every_skipped_file(svg_tree, tmp_path, monkeypatch):
  if shutil.which("rsvg-convert") is None:
    pytest.skip("rsvg-convert (librsvg2-bin) missing")
  warnings = []  # every skip line: per file (INFO) and the count (WARNING)
  for level in ("info", "warning"):
    monkeypatch.setattr(logging, level,
                        lambda msg, *args: warnings.append(msg % args))
  openclipart.Openclipart(config=_small_config(), svg_dir=svg_tree,
                          data_dir=tmp_path).download_and_prepare()
  for path, reason in _NOT_READ.items():
    if reason == "excluded folder":
      continue
    assert any(path in w for w in warnings), path
  assert any("skipped 2 of 22 drawings that did not render" in w
             for w in warnings)
  assert any("skipped 1 of 25 drawings without a caption" in w
             for w in warnings)


def _data_config(data_dir, **fields) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "openclipart", "data_dir": str(data_dir),
      "image_text": image_text.section(**fields)})


def test_make_builder_default_and_custom_configs(svg_tree, tmp_path):
  default = image_text.make_builder(_data_config(tmp_path))
  assert default.builder_config.name == "rgb64"
  custom = image_text.make_builder(_data_config(tmp_path, image_size=32))
  other = image_text.make_builder(_data_config(tmp_path, svg_dir=svg_tree))
  names = {b.builder_config.name for b in (default, custom, other)}
  assert len(names) == 3 and custom.builder_config.image_size == 32


def test_open_image_text_without_package_writes_nothing(tmp_path):
  data_dir = tmp_path / "tfds"
  with pytest.raises(RunError, match="openclipart-svg"):
    image_text.open_image_text(_data_config(data_dir,
                                            svg_dir=tmp_path / "none"))
  assert not data_dir.exists()


@needs_rsvg
def test_pipeline_source_examples(svg_tree, tmp_path, monkeypatch):
  cfg = _data_config(tmp_path, svg_dir=str(svg_tree), image_size=16,
                     vocab_size=60, seq_len=16, validation_fraction=0.3,
                     test_fraction=0.3)
  source = pipeline.open_source(cfg, "train")
  assert source.class_names == openclipart.CATEGORIES
  spec = "caption_tokens|keep('image', 'input_ids', 'input_mask', 'label')"
  examples = [preprocess.build(spec)(ex, [0, i])
              for i, ex in enumerate(source.read())]
  assert len(examples) == source.total_examples
  for ex in examples:
    assert ex["image"].shape == (16, 16, 3) and ex["image"].dtype == np.uint8
    assert ex["input_ids"].shape == ex["input_mask"].shape == (16,)
    assert 0 <= ex["label"] < 22
  # Once prepared, it opens without rsvg-convert.
  monkeypatch.setattr(shutil, "which", lambda name: None)
  tokenizer = image_text.load_tokenizer(image_text.open_image_text(cfg))
  assert tokenizer.vocab_size <= 60


@pytest.mark.slow
@pytest.mark.skipif(not openclipart.SVG_DIR.is_dir() or
                    shutil.which("rsvg-convert") is None,
                    reason="Debian openclipart-svg / librsvg2-bin missing")
def test_real_package():
  # The dataset the launcher tests read (TFDS's data dir, prepared once
  # under its lock by whichever comes first), not a second copy: preparing
  # rasterises every drawing.
  builder = image_text.open_image_text(config_lib.load_config(
      f"{REPO}/configs/align_openclipart.py:smoke").data)
  assert isinstance(builder, openclipart.Openclipart)
  splits = builder.info.splits
  assert sum(splits[s].num_examples for s in splits) > 3000
  assert splits["validation"].num_examples > 200
  captions = {split: {ex["caption"] for ex in builder.as_dataset(
      split=split).as_numpy_iterator()} for split in captioned_images.SPLITS}
  assert not captions["train"] & captions["validation"]
  assert not captions["train"] & captions["test"]
  assert not captions["validation"] & captions["test"]
  assert captioned_images.load_tokenizer(builder).vocab_size > 1000
  assert isinstance(builder.info.features["label"], tfds.features.ClassLabel)
