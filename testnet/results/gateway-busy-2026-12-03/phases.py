# phases.py RUN_DIR...: per run, when (s, link-sample clock) the gateway's in/out and the nodes' in cross fractions of their final bytes
import csv,collections,sys,glob
def load(p):
    rows=list(csv.DictReader(open(p)))
    by=collections.defaultdict(dict)
    for r in rows: by[float(r['t_s'])][r['link']]=r
    return by
for d in sys.argv[1:]:
    f=glob.glob(d+'/n10/links-edgeswarm-10.csv')
    if not f: continue
    by=load(f[0]); ts=sorted(by); t0=by[ts[0]]; tN=by[ts[-1]]
    links=sorted([l for l in t0 if l.startswith('n')], key=lambda x:int(x.split('-')[1]))
    def v(t,l,k): return int(by[t][l][k])-int(t0[l][k])
    def cross(l,k,frac):
        tot=v(ts[-1],l,k)
        for t in ts:
            if v(t,l,k)>=frac*tot: return t
    out=[]
    gi1=cross(links[0],'rx_bytes',0.02); gi=cross(links[0],'rx_bytes',0.99); go=cross(links[0],'tx_bytes',0.99)
    go1=cross(links[0],'tx_bytes',0.1); gi10=cross(links[0],'rx_bytes',0.1)
    last=max(cross(l,'rx_bytes',0.99) for l in links[1:])
    first=min(cross(l,'rx_bytes',0.99) for l in links[1:])
    print(f"{d.split('/')[-1]:16} gw_in2% {gi1:.1f} gw_in10% {gi10:.1f} gw_out10% {go1:.1f} gw_in99% {gi:.1f} gw_out99% {go:.1f} nodes99% first {first:.1f} last {last:.1f} | out-in lag {go-gi:.2f} tail {last-go:.2f}")
