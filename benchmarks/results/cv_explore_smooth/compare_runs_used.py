"""Rows and convergence.png of docs/results/cv-biasing.md with the smooth-CV runs added."""
import json, sys
from openmm_geom.workflows.cv_bias import compare_runs
runs = {"app.Metadynamics s1": "app_metad_s1", "OPES s1": "opes_s1", "OPES s2": "opes_s2",
        "OPES s3": "opes_s3", "OPES, rough learned CV, w 0.5": "trial_wf0.5",
        "OPES, smooth learned CV s1": "smooth_adapt", "OPES, smooth learned CV s2": "smooth_adapt_s2"}
reference = (8.52, 0.14)
rows = compare_runs(runs, sys.argv[1], reference=reference,
                    reference_label="OPES pooled (first ns discarded)")
rows1 = compare_runs({k: v for k, v in runs.items() if "smooth" in k}, "/tmp/discard1.png",
                     reference=reference, discard_ns=1.0)
out = {}
for k, r in rows.items():
    out[k] = {x: r[x] for x in r if x != "convergence"}
    if k in rows1:
        out[k]["discard1"] = {x: rows1[k][x] for x in ("delta_f_kJmol", "block_error_kJmol", "time_to_converge_ns", "time_to_reference_ns")}
    print(k, json.dumps(out[k]))
    if "smooth" in k:
        print("  prefixes", [(round(t, 2), None if v is None else round(v, 2)) for t, v in zip(r["convergence"]["time_ns"], r["convergence"]["delta_f_kJmol"])] if "time_ns" in r["convergence"] else list(r["convergence"]))
json.dump(out, open("smooth_rows.json", "w"), indent=1)
