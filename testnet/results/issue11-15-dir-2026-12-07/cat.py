import sys, collections
samples=[]; cur=None; frames=[]
def flush():
    if cur: samples.append((cur, frames))
for line in open(sys.argv[1]):
    if not line.strip(): continue
    if not line.startswith("\t") and not line.startswith(" "):
        flush(); p=line.split(); pt=p[-1]; comm=" ".join(p[:-1]); pid,tid=pt.split("/"); cur=(comm,pid,tid); frames=[]
    else:
        q=line.split(None,1)
        if len(q)==2: frames.append((q[0],q[1].strip()))
flush()
excl=set(sys.argv[2].split(","))
pc=collections.defaultdict(set)
for (c,p,t),f in samples: pc[p].add(c)
# Binaries renamed for a run: NODE_COMMS / TESTNET_COMMS (comma-separated
# thread names) add to the defaults; RATE is perf's sampling rate in Hz.
import os
RATE=int(os.environ.get("RATE","299"))
extra=lambda v: {c for c in os.environ.get(v,"").split(",") if c}
nodes={p for p in pc if p not in excl and pc[p]&({"edgeswarm-main","tokio-rt-worker","layer-sha256"}|extra("NODE_COMMS")) and not pc[p] <= ({"edgeswarm-testn","tokio-rt-worker","testnet-sampler","ip","cat"}|extra("TESTNET_COMMS"))}
print("node pids",len(nodes))
rules=[
 ("inflate", lambda s,k: "zlib_rs::inflate" in s or "MultiGzDecoder" in s or "crc32" in s and not k),
 ("sha256", lambda s,k: "sha256" in s or "sha2::" in s),
 ("chacha/noise", lambda s,k: "chacha" in s or "poly1305" in s or "snow" in s),
 ("curve25519/ed25519", lambda s,k: "curve25519" in s or "ed25519" in s),
]
cats=collections.Counter(); n=0
def syscall_name(names):
    for i,nm in enumerate(names):
        if nm.startswith("do_syscall_64") and i>0: return names[i-1]
    return None
for (c,p,t),f in samples:
    if p not in nodes: continue
    n+=1
    if not f: cats["?"]+=1; continue
    names=[x[1].split("+")[0] for x in f]; k=f[0][0].startswith("ffffffff")
    leaf=names[0]
    if not k:
        for nm,r in rules:
            if r(leaf,k): cats["u "+nm]+=1; break
        else:
            if "memmove" in leaf or "memcpy" in leaf: cats["u memcpy"]+=1
            elif "memset" in leaf: cats["u memset"]+=1
            elif "malloc" in leaf or "free" in leaf or "_int_" in leaf or "unlink_chunk" in leaf: cats["u malloc"]+=1
            elif "libp2p" in leaf or "yamux" in leaf or "multistream" in leaf: cats["u libp2p"]+=1
            elif "tokio" in leaf: cats["u tokio"]+=1
            else: cats["u other"]+=1
        continue
    s=set(names)
    if s & {"net_rx_action","process_backlog","__netif_receive_skb"}: cats["k rx-softirq"]+=1; continue
    sc=syscall_name(names)
    if sc: cats["k sys "+sc.replace("__x64_sys_","").replace("__do_sys_","")]+=1; continue
    if "asm_exc_page_fault" in s or "exc_page_fault" in s: cats["k pagefault"]+=1; continue
    if s & {"schedule","__schedule","finish_task_switch.isra.0"}: cats["k sched"]+=1; continue
    cats["k other "+names[-1]]+=1
print("samples",n, "per node", round(n/len(nodes)))
for k,v in cats.most_common(40): print(f"{v:6} {100*v/n:5.1f}% {v/len(nodes)/RATE:6.3f}s/node {k}")
