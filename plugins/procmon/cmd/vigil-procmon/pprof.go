//go:build pprof

// Built with -tags pprof (bench/procmon/run.sh PPROF=dir does), the plugin
// writes a CPU profile of its first PPROF_SECONDS (default 30) and, every
// 10 seconds, a heap profile and the runtime's memory statistics to the
// directory named by VIGIL_PROCMON_PPROF. Never in a release build.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strconv"
	"time"
)

func init() {
	dir := os.Getenv("VIGIL_PROCMON_PPROF")
	if dir == "" {
		return
	}
	secs, _ := strconv.Atoi(os.Getenv("PPROF_SECONDS"))
	if secs <= 0 {
		secs = 30
	}
	if f, err := os.Create(filepath.Join(dir, "cpu.pprof")); err == nil {
		if err := pprof.StartCPUProfile(f); err == nil {
			time.AfterFunc(time.Duration(secs)*time.Second, func() { pprof.StopCPUProfile(); f.Close() })
		}
	}
	go func() {
		for range time.Tick(10 * time.Second) {
			if f, err := os.Create(filepath.Join(dir, "heap.pprof")); err == nil {
				_ = pprof.Lookup("heap").WriteTo(f, 0)
				f.Close()
			}
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			s := fmt.Sprintf("HeapAlloc %d\nHeapInuse %d\nHeapIdle %d\nHeapReleased %d\nHeapSys %d\nStackInuse %d\nMSpanInuse %d\nGCSys %d\nOtherSys %d\nSys %d\nNumGC %d\nNextGC %d\n",
				ms.HeapAlloc, ms.HeapInuse, ms.HeapIdle, ms.HeapReleased, ms.HeapSys, ms.StackInuse, ms.MSpanInuse, ms.GCSys, ms.OtherSys, ms.Sys, ms.NumGC, ms.NextGC)
			_ = os.WriteFile(filepath.Join(dir, "memstats.txt"), []byte(s), 0o644)
		}
	}()
}
