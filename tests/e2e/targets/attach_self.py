"""Exercise aioscope_target_open_self / aioscope_thread_stack inside a real interpreter (test only).

argv[1]: a shared library holding the attach library (built by the test from the static
libraries), exporting test_open_self / test_thread_stack / test_close, which forward to
aioscope_target_open_self / aioscope_thread_stack / aioscope_target_close. A worker thread spins in pure Python (taking and releasing the GIL all the time)
inside spin_here(); the main thread reads the worker's stack through the library, by ctypes,
which releases the GIL during the call — the situation of the agent's watchdog. Prints one JSON
line per read, then "done"."""
import ctypes
import json
import sys
import threading
import time

lib = ctypes.CDLL(sys.argv[1])


class Frame(ctypes.Structure):
    _fields_ = [("file", ctypes.c_char * 512), ("function", ctypes.c_char * 256), ("line", ctypes.c_int)]


lib.test_open_self.argtypes = [ctypes.c_uint32, ctypes.c_uint64, ctypes.POINTER(ctypes.c_void_p)]
lib.test_thread_stack.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.POINTER(Frame),
                                      ctypes.c_size_t, ctypes.POINTER(ctypes.c_size_t)]
lib.test_close.argtypes = [ctypes.c_void_p]
ctypes.pythonapi.PyThreadState_Get.restype = ctypes.c_void_p

worker_tstate = None
stop = False
ready = threading.Event()


def spin_here():
    global worker_tstate
    worker_tstate = ctypes.pythonapi.PyThreadState_Get()
    ready.set()
    n = 0
    while not stop:
        n += 1  # MARK-SPIN
    return n


def worker():
    spin_here()  # MARK-CALL


def main():
    global stop
    runtime = ctypes.addressof(ctypes.c_char.in_dll(ctypes.pythonapi, "_PyRuntime"))
    target = ctypes.c_void_p()
    rc = lib.test_open_self(sys.hexversion, runtime, ctypes.byref(target))
    if rc != 0:
        print(json.dumps({"open": rc}), flush=True)
        return
    th = threading.Thread(target=worker)
    th.start()
    ready.wait()
    frames = (Frame * 64)()
    n = ctypes.c_size_t()
    for _ in range(int(sys.argv[2])):
        rc = lib.test_thread_stack(target, worker_tstate, frames, 64, ctypes.byref(n))
        out = [{"file": f.file.decode(), "function": f.function.decode(), "line": f.line}
               for f in frames[:n.value]] if rc == 0 else []
        print(json.dumps({"rc": rc, "stack": out}), flush=True)
    # A dangling thread-state pointer: an error code, not a crash.
    rc = lib.test_thread_stack(target, 0x10, frames, 64, ctypes.byref(n))
    print(json.dumps({"dangling": rc}), flush=True)
    stop = True
    th.join()
    lib.test_close(target)
    print("done", flush=True)


main()
