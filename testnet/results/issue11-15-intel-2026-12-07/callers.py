import os, sys, collections
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../issue11-15-dir-2026-12-07/cat.py")).read().split("cats=collections.Counter()")[0])
pat=sys.argv[3]; filt=sys.argv[4] if len(sys.argv)>4 else "edgeswarm"
c=collections.Counter(); n=0
for (cm,p,t),f in samples:
    if p not in nodes or not f: continue
    names=[x[1].split("+")[0] for x in f]
    if pat not in names[0]: continue
    n+=1
    # first caller frame containing filt
    sig=" <- ".join([nm[:90] for nm in names if filt in nm][:2]) or ("thread:"+cm)
    c[sig]+=1
print("samples",n, round(n/len(nodes)/RATE,3),"s/node")
for k,v in c.most_common(25): print(f"{v:6} {v/n*100:5.1f}% {k}")
