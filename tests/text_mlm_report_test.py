"""experiments/text_mlm/report.py on hand-made summaries: the tables, the
claim check (holds / FAILS / missing) and the PNGs."""
import json

from conftest import load_script, write_summary


def test_tables_claims_and_plots(tmp_path):
  report = load_script("experiments/text_mlm/report.py")
  dims = report.DIMS
  write_summary(tmp_path, "mrl_e", "eval", {"step": 600, "mlm_accuracy": {
      str(d): 0.1 + d / 1000 for d in dims}})
  write_summary(tmp_path, "mrl_e", "knn",
                {f"knn/top1/d={d}": 0.5 for d in dims})
  write_summary(tmp_path, "ff8", "eval",
                {"step": 600, "mlm_accuracy": {"8": 0.2}})
  write_summary(tmp_path, "ff32", "eval",
                {"step": 600, "mlm_accuracy": {"32": 0.134}})
  write_summary(tmp_path, "ff128", "baselines", {
      **{f"truncate/knn_top1/d={d}": 0.3 for d in dims},
      **{f"svd/linear_top1/d={d}": 0.4 for d in dims}})
  r = report.collect(str(tmp_path))
  assert r["mlm"]["mrl_e"][128] == 0.1 + 0.128 and r["mlm"]["ff"] == {
      8: 0.2, 32: 0.134}
  text = report.markdown(r)
  assert "| MRL-E | 10.80 |" in text
  assert "MRL-E at 8 dims within 0.5 points of FF-8: FAILS" in text
  assert "MRL-E at 32 dims within 0.5 points of FF-32: holds" in text
  assert "MRL-E at 128 dims within 0.5 points of FF-128: missing" in text
  assert "| FF-128, first m dims | 30.00 |" in text
  report.plot(r, str(tmp_path))
  for png in ("mlm_accuracy_vs_dim.png", "lexnames_vs_dim.png"):
    assert (tmp_path / png).stat().st_size > 1000


def test_an_earlier_results_json_fills_what_is_missing(tmp_path):
  report = load_script("experiments/text_mlm/report.py")
  write_summary(tmp_path, "ff32", "eval",
                {"step": 600, "mlm_accuracy": {"32": 0.134}})
  earlier = {"mlm": {"mrl_e": {"8": 0.1}, "ff": {"8": 0.2, "32": 0.5}},
             "knn": {"mrl_e": {"8": 0.3}}, "probe": {},
             "steps": {"mrl_e": 600}}
  r = report.fill_from(report.collect(str(tmp_path)),
                       json.loads(json.dumps(earlier)))
  # New numbers win; the earlier ones fill only the gaps.
  assert r["mlm"]["ff"] == {8: 0.2, 32: 0.134}
  assert r["mlm"]["mrl_e"] == {8: 0.1} and r["knn"]["mrl_e"] == {8: 0.3}
  assert r["steps"]["mrl_e"] == 600
