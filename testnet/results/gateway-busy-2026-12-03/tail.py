# tail.py LINKS.csv FROM TO: per-node cumulative MB in (rx) per sample, gateway first
import csv,collections,sys
rows=list(csv.DictReader(open(sys.argv[1])))
by=collections.defaultdict(dict)
for r in rows: by[float(r['t_s'])][r['link']]=r
ts=sorted(by); t0=by[ts[0]]
links=sorted([l for l in t0 if l.startswith('n')], key=lambda x:int(x.split('-')[1]))
lo,hi=float(sys.argv[2]),float(sys.argv[3])
for t in ts:
    if lo<=t<=hi:
        print(f"{t:4.1f} gw_out {(int(by[t][links[0]]['tx_bytes'])-int(t0[links[0]]['tx_bytes']))/1e6:5.1f} in: "+" ".join(f"{(int(by[t][l]['rx_bytes'])-int(t0[l]['rx_bytes']))/1e6:5.1f}" for l in links[1:])+"  out: "+" ".join(f"{(int(by[t][l]['tx_bytes'])-int(t0[l]['tx_bytes']))/1e6:4.0f}" for l in links[1:]))
