import sys, collections
exec(open("cat.py").read().split("cats=collections.Counter()")[0])
c=collections.Counter()
for (cm,p,t),f in samples:
    if p not in nodes or not f: continue
    if f[0][0].startswith("ffffffff"): continue
    c[f[0][1].split("+")[0][:110]]+=1
tot=sum(c.values())
for k,v in c.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 40): print(f"{v:6} {v/len(nodes)/499:6.3f}s/node {k}")
