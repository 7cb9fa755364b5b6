# timeline.py LINKS.csv [STEP]: cumulative MB per 100 ms step of a testnet run: cloud link, gateway in/out (first n link), other nodes in (min, max) and out (sum). rx of a node link = the node's download.
import csv,collections,sys
rows=list(csv.DictReader(open(sys.argv[1])))
step=int(sys.argv[2]) if len(sys.argv)>2 else 3
by=collections.defaultdict(dict)
for r in rows: by[float(r['t_s'])][r['link']]=r
ts=sorted(by); t0=by[ts[0]]
links=[l for l in t0 if l.startswith('n')]
def v(d,l,k): return (int(d[l][k])-int(t0[l][k]))/1e6
for t in ts[::step]:
    d=by[t]
    nin=[v(d,l,'rx_bytes') for l in links[1:]]
    nout=[v(d,l,'tx_bytes') for l in links[1:]]
    print(f"{t:5.1f} cloud {v(d,'cloud0','rx_bytes')+v(d,'cloud0','tx_bytes'):5.1f} gw_in {v(d,links[0],'rx_bytes'):5.1f} gw_out {v(d,links[0],'tx_bytes'):5.1f} nodes_in min {min(nin):5.1f} max {max(nin):5.1f} nodes_out sum {sum(nout):5.1f}")
