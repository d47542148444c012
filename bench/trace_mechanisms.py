"""Cost of candidate per-step observation mechanisms for --trace (docs/trace.md): a C profile
function (cProfile) and sys.monitoring with a trivial callback, against plain, on 3.12+.
Run: python3.12 bench/trace_mechanisms.py"""
import asyncio, sys, time, statistics, cProfile

async def leaf():
    await asyncio.sleep(0); await asyncio.sleep(0)

async def spawn():
    await asyncio.gather(*(leaf() for _ in range(20000)))

async def pingpong():
    a, b = asyncio.Queue(), asyncio.Queue()
    async def p():
        for i in range(20000):
            await a.put(i); await b.get()
    async def q():
        for i in range(20000):
            await b.put(await a.get())
    await asyncio.gather(p(), q())

def run(w):
    t = time.process_time(); asyncio.run(w()); return time.process_time() - t

def mon_on():
    m = sys.monitoring; E = m.events
    m.use_tool_id(3, "x")
    def cb(code, off, *a): return None
    for ev in (E.PY_RESUME, E.PY_YIELD, E.PY_RETURN, E.PY_START):
        m.register_callback(3, ev, cb)
    m.set_events(3, E.PY_RESUME | E.PY_YIELD | E.PY_RETURN | E.PY_START)
def mon_off():
    sys.monitoring.set_events(3, 0); sys.monitoring.free_tool_id(3)

res = {}
for r in range(5):
    for w in (spawn, pingpong):
        res.setdefault((w.__name__, "plain"), []).append(run(w))
        pr = cProfile.Profile(); pr.enable(); res.setdefault((w.__name__, "C profiler (cProfile)"), []).append(run(w)); pr.disable()
        mon_on(); res.setdefault((w.__name__, "sys.monitoring, Python callback"), []).append(run(w)); mon_off()
for w in ("spawn", "pingpong"):
    base = statistics.median(res[(w, "plain")])
    for k in ("C profiler (cProfile)", "sys.monitoring, Python callback"):
        print(w, k, "%.2fx" % (statistics.median(res[(w, k)]) / base))
