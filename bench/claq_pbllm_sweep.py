"""CLAQ / PB-LLM option sweep on real (W, H) pairs, through `lowbit qmatrix --json`.

Usage: python3 bench/claq_pbllm_sweep.py BUILD_DIR WH_DIR
  WH_DIR holds files written by bench_export_wh (tensors "W" and "H"), e.g.
    for L in 0 1 2 3 4; do for lin in q k v o gate up down; do
      BUILD_DIR/bench_export_wh --model ../shared/models/stories260K \
        --tokens ../shared/data/stories260K-calib.u32 --layer $L --linear $lin \
        --out WH_DIR/l${L}_$lin.safetensors; done; done
Prints one JSON line per configuration (geometric mean of rel_err over the layers, mean
bpw) and pairwise comparisons (on how many layers the first configuration is better)."""
import json, subprocess, math, glob, os, sys
if len(sys.argv) != 3:
    sys.exit(__doc__)
lowbit = os.path.join(sys.argv[1], 'lowbit')
files = sorted(glob.glob(os.path.join(sys.argv[2], '*.safetensors')))
if not files:
    sys.exit('no .safetensors files in ' + sys.argv[2])
configs = {
 'gptq2': ['--method','gptq','--bits','2'],
 'gptq2_g32': ['--method','gptq','--bits','2','--group-size','32'],
 'claq2': ['--method','claq','--bits','2'],
 'claq2_wo': ['--method','claq','--bits','2','--centroids-with-outliers'],
 'claq2_k': ['--method','claq','--bits','2','--outlier-keep','0.05,0.02'],
 'claq2_k_wo': ['--method','claq','--bits','2','--outlier-keep','0.05,0.02','--centroids-with-outliers'],
 'claq2.1': ['--method','claq','--bits','2.1'],
 'claq2.1_hs': ['--method','claq','--bits','2.1','--outlier-hessian-score'],
 'claq3': ['--method','claq','--bits','3'],
 'claq3_wo': ['--method','claq','--bits','3','--centroids-with-outliers'],
 'claq3_k': ['--method','claq','--bits','3','--outlier-keep','0.05,0.02'],
 'claq3_k_wo': ['--method','claq','--bits','3','--outlier-keep','0.05,0.02','--centroids-with-outliers'],
 'gptq3': ['--method','gptq','--bits','3'],
 'pbllm': ['--method','pbllm'],
 'pbllm_mag': ['--method','pbllm','--salient-criterion','magnitude'],
}
res = {}
for name, args in configs.items():
    logs, bpws, wins = [], [], 0
    for f in files:
        out = subprocess.run([lowbit,'qmatrix','--weight',f+':W','--hessian',f+':H','--json','--threads','1']+args, capture_output=True, text=True)
        if out.returncode != 0:
            print(name, f, out.stderr.strip()); sys.exit(1)
        j = json.loads(out.stdout)
        assert j['exact'], (name, f)
        logs.append(math.log(j['rel_err'])); bpws.append(j['bpw'])
    res[name] = logs
    print(json.dumps({'config': name, 'layers': len(files), 'geomean_rel_err': round(math.exp(sum(logs)/len(logs)), 5), 'mean_bpw': round(sum(bpws)/len(bpws), 4)}))
for a, b in [('claq2','claq2_wo'),('claq2_k','claq2_k_wo'),('claq3','claq3_wo'),('claq3_k','claq3_k_wo'),('claq2.1','claq2.1_hs')]:
    w = sum(1 for x, y in zip(res[a], res[b]) if x < y)
    print(json.dumps({'compare': a + ' vs ' + b, 'first_better_on': w, 'of': len(files)}))
