// nexus-bench: the one workload program the layer-overhead benchmark ships into every
// layer (host, VM, container, inner VM). Static, no dependencies, JSON on stdout.
//
//	nexus-bench info
//	nexus-bench run WORKLOAD --seconds S --repeats R [--dir D] [--file-mib N] [--url U]
//	nexus-bench batch --seconds S --repeats R [--dir D] [--file-mib N] WORKLOAD...
//	                                           (one JSON line per workload, as each ends)
//	nexus-bench serve --port P --seconds S [--address A]   (HTTP; exits on stdin EOF or after S)
//	nexus-bench noop                           (the child of the spawn workload)
//
// Every workload runs for a fixed time and reports a rate, so a slow layer (TCG) takes
// as long as a fast one instead of longer.
package main

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"sync"
	"time"
)

type result struct {
	Workload string    `json:"workload"`
	Unit     string    `json:"unit"`
	Values   []float64 `json:"values"`
	Note     string    `json:"note,omitempty"`
	Error    string    `json:"error,omitempty"`
}

type options struct {
	seconds float64
	dir     string
	fileMiB int
	url     string
}

func (o options) duration() time.Duration {
	return time.Duration(o.seconds * float64(time.Second))
}

// A workload measures once and returns its figure; the note says how (e.g. "O_DIRECT").
type workload struct {
	unit    string
	measure func(o options) (float64, string, error)
}

var workloads = map[string]workload{
	"cpu-single": {"Mops/s", func(o options) (float64, string, error) { return cpuRate(o, 1), "", nil }},
	"cpu-all": {"Mops/s", func(o options) (float64, string, error) {
		n := runtime.GOMAXPROCS(0)
		return cpuRate(o, n), fmt.Sprintf("%d threads", n), nil
	}},
	"memory":        {"MiB/s", memoryBandwidth},
	"disk-write":    {"MiB/s", sequentialWrite},
	"disk-randread": {"IOPS", randomRead},
	"spawn":         {"spawns/s", spawnRate},
	"http":          {"ms", httpLatency},
}

func main() {
	if len(os.Args) < 2 {
		fail("usage: nexus-bench info | run WORKLOAD ... | serve ... | noop")
	}
	switch os.Args[1] {
	case "noop":
		return
	case "info":
		emit(map[string]any{"os": runtime.GOOS, "arch": runtime.GOARCH, "cpus": runtime.GOMAXPROCS(0)})
	case "serve":
		serve(os.Args[2:])
	case "run":
		run(os.Args[2:])
	case "batch":
		batch(os.Args[2:])
	default:
		fail("unknown command " + os.Args[1])
	}
}

func parseOptions(command string, args []string) (options, int, []string) {
	flags := flag.NewFlagSet(command, flag.ExitOnError)
	var o options
	repeats := flags.Int("repeats", 3, "measurements")
	flags.Float64Var(&o.seconds, "seconds", 2, "seconds per measurement")
	flags.StringVar(&o.dir, "dir", os.TempDir(), "directory on the layer's own disk")
	flags.IntVar(&o.fileMiB, "file-mib", 32, "size of the random-read file and the write cap unit")
	flags.StringVar(&o.url, "url", "", "URL for the http workload")
	_ = flags.Parse(args)
	return o, *repeats, flags.Args()
}

// measure runs one workload `repeats` times; an error ends it and is returned with it.
func measure(name string, o options, repeats int) (result, error) {
	w, ok := workloads[name]
	if !ok {
		return result{Workload: name}, fmt.Errorf("unknown workload %s", name)
	}
	out := result{Workload: name, Unit: w.unit, Values: []float64{}}
	defer cleanUp()
	for i := 0; i < repeats; i++ {
		value, note, err := w.measure(o)
		if err != nil {
			return out, fmt.Errorf("%s: %w", name, err)
		}
		out.Values = append(out.Values, value)
		out.Note = note
	}
	return out, nil
}

func run(args []string) {
	if len(args) < 1 {
		fail("run: which workload?")
	}
	o, repeats, _ := parseOptions("run", args[1:])
	out, err := measure(args[0], o, repeats)
	if err != nil {
		fail(err.Error())
	}
	emit(out)
}

// batch runs several workloads in one process: a layer reached through slow hops (docker
// exec over SSH into an emulated VM) pays for the hops once, not once per workload. A
// failed workload is reported on its line and the next one runs.
func batch(args []string) {
	o, repeats, names := parseOptions("batch", args)
	if len(names) == 0 {
		fail("batch: which workloads?")
	}
	for _, name := range names {
		out, err := measure(name, o, repeats)
		if err != nil {
			out.Error = err.Error()
		}
		emit(out)
	}
}

func cleanUp() {
	if readFile != "" {
		os.Remove(readFile)
	}
}

// --- CPU: integer arithmetic mixed with loads and stores in a 64 KiB table (in cache), like
// ordinary compiled code; a loop of register-only arithmetic would flatter an emulator (TCG),
// whose cost is mostly in memory accesses.

var sink uint64

func cpuRate(o options, threads int) float64 {
	const chunk = 100_000
	deadline := time.Now().Add(o.duration())
	var total uint64
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func(seed uint64) {
			defer wg.Done()
			var table [16384]uint32
			x, acc, ops := seed|1, uint32(0), uint64(0)
			for time.Now().Before(deadline) {
				for i := 0; i < chunk; i++ {
					x = x*6364136223846793005 + 1442695040888963407
					slot := (x >> 40) & 16383
					table[slot] += uint32(x >> 32)
					acc ^= table[(slot*7+1)&16383]
				}
				ops += chunk
			}
			x ^= uint64(acc)
			mu.Lock()
			total += ops
			sink ^= x
			mu.Unlock()
		}(uint64(t) + 0x9E3779B97F4A7C15)
	}
	wg.Wait()
	return float64(total) / time.Since(start).Seconds() / 1e6
}

// --- Memory: copy a buffer larger than any CPU cache back and forth.

var memoryBuffers [2][]byte

func memoryBandwidth(o options) (float64, string, error) {
	const size = 32 << 20
	if memoryBuffers[0] == nil {
		// Set up once per run, outside the timing; doubling copies are fast even under TCG.
		memoryBuffers = [2][]byte{make([]byte, size), make([]byte, size)}
		_, _ = rand.Read(memoryBuffers[0][:4096])
		for filled := 4096; filled < size; filled *= 2 {
			copy(memoryBuffers[0][filled:], memoryBuffers[0][:filled])
		}
	}
	src, dst := memoryBuffers[0], memoryBuffers[1]
	copied := 0
	start := time.Now()
	deadline := start.Add(o.duration())
	for time.Now().Before(deadline) {
		copy(dst, src)
		src, dst = dst, src
		copied += size
	}
	return float64(copied) / (1 << 20) / time.Since(start).Seconds(), "32 MiB copy", nil
}

// --- Disk: sequential 1 MiB writes for the time given, then fsync; the rate counts both.

func sequentialWrite(o options) (float64, string, error) {
	path := filepath.Join(o.dir, fmt.Sprintf("nexus-bench-write-%d", os.Getpid()))
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return 0, "", err
	}
	defer os.Remove(path)
	defer f.Close()
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block) // incompressible, so a compressing layer gains nothing
	maxBytes := int64(o.fileMiB) * 8 << 20
	written := int64(0)
	start := time.Now()
	deadline := start.Add(o.duration())
	for time.Now().Before(deadline) && written < maxBytes {
		n, err := f.Write(block)
		if err != nil {
			return 0, "", err
		}
		written += int64(n)
	}
	if err := f.Sync(); err != nil {
		return 0, "", err
	}
	return float64(written) / (1 << 20) / time.Since(start).Seconds(), "1 MiB writes + fsync", nil
}

// --- Disk: random 4 KiB reads of a file that is not in the page cache.

// readFile is written once per run (outside the timing) and removed when the run ends.
var readFile string

func randomRead(o options) (float64, string, error) {
	size := int64(o.fileMiB) << 20
	if readFile == "" {
		path := filepath.Join(o.dir, fmt.Sprintf("nexus-bench-read-%d", os.Getpid()))
		if err := writeFile(path, size); err != nil {
			os.Remove(path)
			return 0, "", err
		}
		readFile = path
	}
	f, how, err := openUncached(readFile)
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	buf := alignedBlock(4096)
	var r [8]byte
	blocks := size / 4096
	reads := 0
	start := time.Now()
	deadline := start.Add(o.duration())
	for time.Now().Before(deadline) {
		_, _ = rand.Read(r[:])
		offset := int64(binary.LittleEndian.Uint64(r[:])%uint64(blocks)) * 4096
		if _, err := f.ReadAt(buf, offset); err != nil && err != io.EOF {
			return 0, "", err
		}
		reads++
	}
	return float64(reads) / time.Since(start).Seconds(), how, nil
}

func writeFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	block := make([]byte, 1<<20)
	_, _ = rand.Read(block)
	for done := int64(0); done < size; done += int64(len(block)) {
		if _, err := f.Write(block); err != nil {
			return err
		}
	}
	return f.Sync()
}

// --- Process start: fork/exec of this same program, which exits at once.

func spawnRate(o options) (float64, string, error) {
	self, err := os.Executable()
	if err != nil {
		return 0, "", err
	}
	spawned := 0
	start := time.Now()
	deadline := start.Add(o.duration())
	for time.Now().Before(deadline) {
		if err := exec.Command(self, "noop").Run(); err != nil {
			return 0, "", err
		}
		spawned++
	}
	return float64(spawned) / time.Since(start).Seconds(), "exec of a static binary", nil
}

// --- HTTP: median latency of GET requests, each on a new connection (what the forward costs).

func httpLatency(o options) (float64, string, error) {
	if o.url == "" {
		return 0, "", fmt.Errorf("--url is required")
	}
	client := &http.Client{
		Timeout:   10 * time.Second,
		Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
	}
	var samples []float64
	deadline := time.Now().Add(o.duration())
	for time.Now().Before(deadline) || len(samples) < 3 {
		started := time.Now()
		response, err := client.Get(o.url)
		if err != nil {
			return 0, "", err
		}
		_, _ = io.Copy(io.Discard, response.Body)
		response.Body.Close()
		if response.StatusCode != http.StatusOK {
			return 0, "", fmt.Errorf("GET %s: %s", o.url, response.Status)
		}
		samples = append(samples, float64(time.Since(started).Microseconds())/1000)
	}
	sort.Float64s(samples)
	return samples[len(samples)/2], fmt.Sprintf("median of %d requests, new connection each", len(samples)), nil
}

// serve answers GET / with "ok" until stdin closes (the benchmark hung up) or time runs out,
// so a server never outlives the run that started it.
func serve(args []string) {
	flags := flag.NewFlagSet("serve", flag.ExitOnError)
	port := flags.Int("port", 0, "TCP port to listen on")
	address := flags.String("address", "", "address to listen on (default: every interface)")
	seconds := flags.Float64("seconds", 120, "exit after this long")
	_ = flags.Parse(args)
	listener, err := net.Listen("tcp", net.JoinHostPort(*address, fmt.Sprint(*port)))
	if err != nil {
		fail(err.Error())
	}
	emit(map[string]any{"listening": listener.Addr().(*net.TCPAddr).Port})
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	go func() {
		time.Sleep(time.Duration(*seconds * float64(time.Second)))
		os.Exit(0)
	}()
	handler := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	_ = http.Serve(listener, handler)
}

func emit(value any) {
	if err := json.NewEncoder(os.Stdout).Encode(value); err != nil {
		fail(err.Error())
	}
}

func fail(message string) {
	fmt.Fprintln(os.Stderr, "nexus-bench: "+message)
	os.Exit(2)
}
