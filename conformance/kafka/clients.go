package kafka

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/wardproxy/ward/internal/testenv"
)

// Result is what a client run printed and how it ended.
type Result struct {
	Stdout, Stderr string
	Err            error // nil when the client exited 0
}

// Output is stdout and stderr together, for matching error messages.
func (r Result) Output() string { return r.Stdout + "\n" + r.Stderr }

func (r Result) String() string {
	// Java clients dump their whole configuration; keep the rest.
	var lines []string
	for _, l := range strings.Split(r.Stderr, "\n") {
		if !strings.HasPrefix(l, "\t") {
			lines = append(lines, l)
		}
	}
	return fmt.Sprintf("err=%v\nstdout:\n%s\nstderr:\n%s", r.Err, r.Stdout, tail(strings.Join(lines, "\n"), 6000))
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

func run(ctx context.Context, stdin string, name string, args ...string) Result {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.WaitDelay = 5 * time.Second
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if stdin != "" {
		cmd.Stdin = strings.NewReader(stdin)
	}
	err := cmd.Run()
	if ctx.Err() != nil {
		err = errors.Join(err, fmt.Errorf("%s timed out: %w", name, ctx.Err()))
	}
	return Result{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// Kcat runs kcat (librdkafka) with its default settings against addr.
type Kcat struct {
	Path string
}

// NewKcat finds kcat, skipping (failing in CI) when it is missing.
func NewKcat(t testing.TB) Kcat { return Kcat{Path: testenv.RequireCommand(t, "kcat")} }

// Produce sends one message per line of msgs to topic and waits for the
// delivery reports.
func (k Kcat) Produce(ctx context.Context, addr, topic, msgs string) Result {
	return run(ctx, msgs, k.Path, "-b", addr, "-P", "-t", topic)
}

// Consume reads count messages of topic from the beginning without a
// consumer group and exits at the end of the partition.
func (k Kcat) Consume(ctx context.Context, addr, topic string, count int) Result {
	return run(ctx, "", k.Path, "-b", addr, "-C", "-t", topic, "-o", "beginning", "-c", fmt.Sprint(count), "-e")
}

// ConsumeGroup reads count messages of topic as a member of group (the
// balanced consumer: FindCoordinator, JoinGroup, SyncGroup, OffsetFetch,
// OffsetCommit, Heartbeat, LeaveGroup).
func (k Kcat) ConsumeGroup(ctx context.Context, addr, group, topic string, count int) Result {
	return run(ctx, "", k.Path, "-b", addr, "-G", group, "-X", "auto.offset.reset=earliest", "-c", fmt.Sprint(count), "-e", topic)
}

// Console runs the Kafka console tools (kafka-tools jar) with their default
// settings.
type Console struct {
	Classpath string
}

// NewConsole finds java and the jars, skipping (failing in CI) when missing.
func NewConsole(t testing.TB) Console { return Console{Classpath: Classpath(t)} }

func (c Console) java(ctx context.Context, stdin, class string, args ...string) Result {
	a := append([]string{"-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", c.Classpath, class}, args...)
	return run(ctx, stdin, "java", a...)
}

// Produce runs org.apache.kafka.tools.ConsoleProducer, one message per line.
func (c Console) Produce(ctx context.Context, addr, topic, msgs string, props ...string) Result {
	args := []string{"--bootstrap-server", addr, "--topic", topic}
	for _, p := range props {
		args = append(args, "--producer-property", p)
	}
	return c.java(ctx, msgs, "org.apache.kafka.tools.ConsoleProducer", args...)
}

// Consume runs org.apache.kafka.tools.consumer.ConsoleConsumer from the
// beginning of topic until count messages (or the timeout).
func (c Console) Consume(ctx context.Context, addr, topic string, count int, props ...string) Result {
	args := []string{"--bootstrap-server", addr, "--topic", topic, "--from-beginning",
		"--max-messages", fmt.Sprint(count), "--timeout-ms", "60000"}
	for _, p := range props {
		args = append(args, "--consumer-property", p)
	}
	return c.java(ctx, "", "org.apache.kafka.tools.consumer.ConsoleConsumer", args...)
}

// FranzProduce produces msgs to topic with franz-go's defaults (idempotent,
// acks=all) and returns the first error.
func FranzProduce(ctx context.Context, addr, topic string, msgs ...string) error {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.DefaultProduceTopic(topic))
	if err != nil {
		return err
	}
	defer cl.Close()
	for _, m := range msgs {
		if err := cl.ProduceSync(ctx, kgo.StringRecord(m)).FirstErr(); err != nil {
			return err
		}
	}
	return nil
}

// FranzConsume consumes count records of topic from the start in group
// (franz-go's default group protocol) and returns their values.
func FranzConsume(ctx context.Context, addr, group, topic string, count int) ([]string, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(addr), kgo.ConsumeTopics(topic), kgo.ConsumerGroup(group),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		return nil, err
	}
	defer cl.Close()
	var got []string
	for len(got) < count {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			return got, err
		}
		var ferr error
		fs.EachError(func(_ string, _ int32, err error) { ferr = errors.Join(ferr, err) })
		if ferr != nil {
			return got, ferr
		}
		fs.EachRecord(func(r *kgo.Record) { got = append(got, string(r.Value)) })
	}
	return got, nil
}
