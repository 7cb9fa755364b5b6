import os, sys, collections
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "../issue11-15-dir-2026-12-07/cat.py")).read().split("cats=collections.Counter()")[0])
c=collections.Counter()
for (cm,p,t),f in samples:
    if p not in nodes or not f: continue
    if f[0][0].startswith("ffffffff"): continue
    c[f[0][1].split("+")[0][:110]]+=1
tot=sum(c.values())
for k,v in c.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 40): print(f"{v:6} {v/len(nodes)/RATE:6.3f}s/node {k}")
