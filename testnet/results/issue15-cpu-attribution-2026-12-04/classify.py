import sys, collections
samples = []
cur = None
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    if not line.startswith("\t") and not line.startswith(" " * 8):
        parts = line.split()
        # comm may contain spaces: pid/tid is the last token
        pidtid = parts[-1]
        comm = " ".join(parts[:-1])
        pid = pidtid.split("/")[0]
        cur = [comm, pid, []]
        samples.append(cur)
    else:
        p = line.split()
        if len(p) >= 2:
            cur[2].append(p[1])
def cat(frames):
    s = set(frames)
    if "net_rx_action" in s or "process_backlog" in s or "__netif_receive_skb" in s or "__netif_receive_skb_core.constprop.0" in s or "netif_receive_skb" in s:
        return "rx-softirq"
    if "net_tx_action" in s:
        return "tx-softirq"
    if frames and frames[0].startswith("0x") is False and any(f.startswith("entry_SYSCALL") or f=="do_syscall_64" for f in frames):
        return "syscall"
    if frames and all(not f.startswith(("__x64", "do_", "entry")) for f in frames[-1:]) and any(f in ("asm_sysvec_apic_timer_interrupt","asm_common_interrupt") for f in frames):
        return "irq"
    return "other"
byproc = collections.defaultdict(collections.Counter)
comms = {}
for comm, pid, frames in samples:
    key = pid
    comms.setdefault(pid, collections.Counter())[comm] += 1
    byproc[key][cat(frames)] += 1
    byproc[key]["total"] += 1
rows = sorted(byproc.items(), key=lambda kv: -kv[1]["total"])
for pid, c in rows[:25]:
    name = comms[pid].most_common(1)[0][0]
    t = c["total"]
    print(f"{pid:>7} {name:18} total {t:6}  rx-softirq {c['rx-softirq']:5} ({100*c['rx-softirq']/t:4.1f}%)  tx-softirq {c['tx-softirq']:4}  syscall {c['syscall']:5}")
