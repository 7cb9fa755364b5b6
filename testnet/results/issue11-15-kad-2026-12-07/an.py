# an.py CHAINS leaf|incl [N]|callers REGEX [DEPTH]: samples of the node processes (pids with edgeswarm_node::daemon on a stack)
# in `perf script -F pid,tid,comm,ip,sym` output of `perf record -a -g` (frame-pointer build), in CPU-s per node at 299 Hz.
import sys, collections, re
samples=[]; cur=None
for line in open(sys.argv[1], errors='replace'):
    if not line.strip():
        if cur: samples.append(cur); cur=None
        continue
    if not line.startswith('\t') and not line.startswith(' '*8):
        m=re.search(r'(\d+)/(-?\d+)', line)
        cur=[int(m.group(1)), line[:m.start()].strip(), []]
    else:
        p=line.strip().split(None,1)
        cur[2].append(p[1] if len(p)>1 else '?')
if cur: samples.append(cur)
nodepids=set(s[0] for s in samples if any('edgeswarm_node::daemon' in f for f in s[2]))
ns=[s for s in samples if s[0] in nodepids]
print('nodepids',len(nodepids),'samples',len(ns), 'per node s', len(ns)/len(nodepids)/299)
mode=sys.argv[2] if len(sys.argv)>2 else 'leaf'
def short(f): return re.sub(r'::h[0-9a-f]{16}','',f)[:150]
if mode=='leaf':
    c=collections.Counter(short(s[2][0]) if s[2] else '?' for s in ns)
    for k,v in c.most_common(60): print(f"{v:6d} {v/len(nodepids)/299:.3f} {k}")
elif mode=='incl':
    c=collections.Counter()
    for s in ns:
        for f in set(short(x) for x in s[2]): c[f]+=1
    for k,v in c.most_common(int(sys.argv[3]) if len(sys.argv)>3 else 120): print(f"{v:6d} {v/len(nodepids)/299:.3f} {k}")
elif mode=='callers':
    pat=sys.argv[3]; depth=int(sys.argv[4]) if len(sys.argv)>4 else 3
    c=collections.Counter()
    for s in ns:
        if s[2] and re.search(pat, s[2][0]):
            c[' <- '.join(short(x)[:70] for x in s[2][1:1+depth])]+=1
    for k,v in c.most_common(40): print(f"{v:6d} {v/len(nodepids)/299:.3f} {k}")
