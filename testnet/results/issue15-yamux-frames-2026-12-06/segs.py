import csv,sys,glob
for d in sys.argv[1:]:
    f=glob.glob(d+'/n*/nodes-edgeswarm-*.csv')
    if not f: continue
    rows=list(csv.DictReader(open(f[0])))
    seg=sum(int(r['tcp_segments_sent']) for r in rows); rs=sum(int(r['tcp_segments_retransmitted']) for r in rows)
    li=sum(int(r['link_in_bytes']) for r in rows); st=sum(int(r['stream_bytes_received']) for r in rows)
    cpu=[float(r['cpu_seconds']) for r in rows]
    print(d, 'segments sent',seg,'resent',rs,'link in %.2f MB'%(li/1e6),'streams in %.2f MB'%(st/1e6), 'cpu gw %.2f nodes mean %.3f'%(cpu[0], sum(cpu[1:])/len(cpu[1:])))
