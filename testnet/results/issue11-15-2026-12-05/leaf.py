import sys, collections
pids=set(sys.argv[2].split(","))
leaf=collections.Counter(); incl=collections.Counter(); tot=0
cur=None; frames=[]
marks=sys.argv[3].split(",") if len(sys.argv)>3 else []
def flush():
    global tot
    if cur not in pids or not frames: return
    tot+=1
    leaf[frames[0]]+=1
    seen=set()
    for f in frames:
        for m in marks:
            if m in f and m not in seen:
                seen.add(m); incl[m]+=1
for line in open(sys.argv[1]):
    if not line.strip(): continue
    if not line.startswith("\t"):
        flush(); parts=line.split(); cur=parts[-1].split("/")[0] if "/" in parts[-1] else parts[1].split("/")[0]; frames=[]
    else:
        p=line.split(None,1)
        if len(p)>=2:
            sym=p[1].rsplit(" (",1)[0]
            frames.append(sym[:90])
flush()
print("total",tot)
for k,v in leaf.most_common(45): print(f"{v:6} {100*v/tot:5.1f}% {k}")
print("--- inclusive")
for k,v in incl.most_common(): print(f"{v:6} {100*v/tot:5.1f}% {k}")
