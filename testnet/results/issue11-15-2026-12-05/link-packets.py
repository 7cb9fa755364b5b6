import csv,sys,collections
rows=list(csv.DictReader(open(sys.argv[1])))
first={};last={}
for r in rows:
    first.setdefault(r['link'],r); last[r['link']]=r
img=float(sys.argv[2]); n=int(sys.argv[3])
# determine which direction is "into node": pick the direction where total ~ N*image
tot=collections.Counter()
for l in last:
    if l.startswith('cloud'): continue
    for k in ('rx_bytes','tx_bytes','rx_packets','tx_packets'):
        tot[k]+=int(last[l][k])-int(first[l][k])
print({k:v for k,v in tot.items()})
for d,o in (('tx','rx'),('rx','tx')):
    b=tot[d+'_bytes']; p=tot[d+'_packets']; ob=tot[o+'_bytes']; op=tot[o+'_packets']
    print(f"dir {d}: bytes/(N*img)={b/(n*img):.4f} packets={p} avg={b/p:.0f}B ; other dir packets={op} avg={ob/op:.0f}")
