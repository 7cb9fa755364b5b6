# serves.py LOG_DIR: the gateway's (edgeswarm-n0.log) chunk stores, serves and blob events, seconds after its pull began,
# with the node each chunk was served to; needs --node-log with edgeswarm_node::store=debug,edgeswarm_node::swarm::exchange=debug
import re,glob,sys,os
os.chdir(sys.argv[1])
def ts(l):
    t=l[11:26]; h,m,s=t.split(':'); return int(h)*3600+int(m)*60+float(s)
g=open('edgeswarm-n0.log').read().splitlines()
t0=[ts(l) for l in g if 'gateway pulling' in l][0]
ids={}
for f in glob.glob('edgeswarm-n*.log'):
    for l in open(f):
        m=re.search(r'swarm started peer_id=(\w+)',l)
        if m: ids[m.group(1)]=f[10:-4]; break
for l in g:
    t=ts(l)-t0
    if t<-0.1 or t>2.5: continue
    if 'served chunk' in l or 'chunk stored' in l or 'blob complete' in l:
        p=re.search(r'peer=(\w+)',l); b=re.search(r'blob=sha256:(\w{6})',l); i=re.search(r'index=(\d+)',l)
        kind='stored' if 'chunk stored' in l else 'served' if 'served' in l else 'complete'
        print(f"{t:6.3f} {kind:8} {b.group(1) if b else ''} {i.group(1) if i else ''} {ids.get(p.group(1),'') if p else ''}")
