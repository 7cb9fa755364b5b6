import sys, collections
pids = set(sys.argv[2].split(","))
cnt = collections.Counter(); tot = 0
cur = None; frames = []
def flush():
    global tot
    if cur is None or cur not in pids: return
    tot += 1
    names = [f[1] for f in frames]
    addrs = [f[0] for f in frames]
    kernel = addrs and addrs[0].startswith("ffffffff")
    s = set(names)
    if not kernel:
        cnt["user"] += 1; return
    if s & {"net_rx_action","process_backlog","__netif_receive_skb"}:
        cnt["k:rx-softirq"] += 1; return
    # find syscall entry: the frame just below do_syscall_64
    if "do_syscall_64" in s:
        i = names.index("do_syscall_64")
        sc = names[i-1] if i > 0 else "?"
        cnt["k:sys:" + sc] += 1; return
    if "asm_exc_page_fault" in s: cnt["k:pagefault"] += 1; return
    if "schedule" in s or "__schedule" in s: cnt["k:sched"] += 1; return
    cnt["k:other:" + (names[-1] if names else "?")] += 1
for line in open(sys.argv[1]):
    if not line.strip(): continue
    if not line.startswith("\t"):
        flush()
        parts = line.split(); cur = parts[-1].split("/")[0]; frames = []
    else:
        p = line.split()
        if len(p) >= 2: frames.append((p[0], p[1]))
flush()
print("total", tot)
for k, v in cnt.most_common(25): print(f"{v:6} {100*v/tot:5.1f}% {k}")
