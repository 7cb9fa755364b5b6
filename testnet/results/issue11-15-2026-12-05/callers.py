import sys, collections
pids=set(sys.argv[2].split(",")); target=sys.argv[3]; depth=int(sys.argv[4]) if len(sys.argv)>4 else 6
c=collections.Counter(); cur=None; frames=[]
skip=("sha2::","digest::","core::","<sha2","<digest","<core","edgeswarm_protocol::address::Digest::of","std::","tokio::runtime","<tokio","tokio::","<tracing","tracing::","<futures","futures_util","<alloc","alloc::")
def flush():
    if cur not in pids or not frames: return
    if not any(target in f for f in frames): return
    i=max(j for j,f in enumerate(frames) if target in f)
    rest=[f for f in frames[i+1:] if not f.startswith(skip)][:depth]
    c[" <- ".join(x[:70] for x in rest)]+=1
for line in open(sys.argv[1]):
    if not line.strip(): continue
    if not line.startswith("\t"):
        flush(); parts=line.split(); cur=parts[1].split("/")[0]; frames=[]
    else:
        p=line.split(None,1)
        if len(p)>=2: frames.append(p[1].rsplit(" (",1)[0])
flush()
for k,v in c.most_common(25): print(v,k)
