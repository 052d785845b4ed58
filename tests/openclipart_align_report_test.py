"""experiments/openclipart_align/report.py on hand-made summaries: the
tables, the claim checks (holds / FAILS / missing) and the PNG."""
from conftest import load_script, write_summary

DIMS = (8, 16, 32, 64, 128)


def test_tables_claims_and_plot(tmp_path):
  report = load_script("experiments/openclipart_align/report.py")
  per_dim = lambda base: {str(d): base + d / 1000 for d in DIMS}
  write_summary(tmp_path, "mrl", "eval", {
      "step": 800, "i2t/recall@1": per_dim(0.05),
      "zero_shot/top1": per_dim(0.1), "cosine/span": per_dim(0.4),
      "extra_eval": {"fashion_mnist": {"zero_shot/top1": per_dim(0.2)}}})
  write_summary(tmp_path, "mrl", "knn",
                {f"knn/top1/d={d}": 0.3 for d in DIMS})
  write_summary(tmp_path, "ff", "eval", {
      "step": 800, "i2t/recall@1": per_dim(0.07),
      "zero_shot/top1": per_dim(0.05), "cosine/span": per_dim(0.3)})
  write_summary(tmp_path, "ff", "baselines", {
      **{f"truncate/knn_top1/d={d}": 0.2 for d in DIMS},
      **{f"svd/knn_top1/d={d}": 0.9 for d in DIMS}})  # not the baseline
  r = report.collect(str(tmp_path))
  assert r["metrics"]["knn/top1"] == {"mrl": {d: 0.3 for d in DIMS},
                                      "ff": {d: 0.2 for d in DIMS}}
  assert r["metrics"]["t2i/recall@1"] == {"mrl": {}, "ff": {}}
  assert r["metrics"][report.FMNIST] == {"mrl": {d: 0.2 + d / 1000
                                                 for d in DIMS}, "ff": {}}
  text = report.markdown(r)
  assert "1-NN above the plain model's: holds (MRL - plain = +10.00)" in text
  assert "zero-shot top-1 above the plain model's: holds (MRL - plain = " \
      "+5.00)" in text
  assert "cosine span larger than the plain model's: holds (MRL - plain " \
      "= +0.10)" in text
  assert "within 1 point of the plain model's (nesting costs little at " \
      "full width): FAILS (MRL - plain = -2.00)" in text
  assert "| MRL | 5.80 | 5.60 |" not in text and "| MRL | 5.80 |" in text
  assert "| plain, first m dims | 0.308 |" in text  # the span, not in %
  assert "| MRL | missing |" in text  # text->image was not written
  report.plot(r, str(tmp_path))
  assert (tmp_path / "align_vs_dim.png").stat().st_size > 1000


def test_nothing_run_yet(tmp_path):
  report = load_script("experiments/openclipart_align/report.py")
  assert "- no results yet" in report.markdown(report.collect(str(tmp_path)))
