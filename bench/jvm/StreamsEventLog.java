// Kafka Streams running the pipeline's kafka-io job, for bench/exactly_once.sh's comparison:
// the article's transform (website-visit → EventLog → website-out, keyed by
// {"event_id", "event_ts"}, empty lat/lng become -1), written as a Kafka Streams user would
// write it with the Processor API, records that do not parse to the dead-letter topic with
// their own key and value. Input headers are forwarded (Kafka Streams' default, and the
// pipeline's). Output is the pipeline's byte for byte: fields in EventLog order, with
// Python's ", " and ": " separators.
//
// Tuned as the pipeline is: NUM_THREADS stream threads (the pipeline's workers), producer
// linger.ms=5 and batch.size=1000000, consumer fetch.max.wait.ms=50; commit.interval.ms as
// given (Kafka Streams' exactly_once_v2 default is 100 ms, at_least_once's 30 s).
// It reads until EXPECTED records have been processed, then closes, which commits (and,
// exactly once, commits the open transaction), like `pipeline --bounded`. Its own timing
// (from the first line of main to the end of close) goes to stderr.
//
// Run from the broker's jars and Kafka Streams' (bench/jvm/pom.xml):
//   java -cp "$KAFKA_HOME/libs/*:$STREAMS_LIBS/*" bench/jvm/StreamsEventLog.java \
//     BOOTSTRAP APPLICATION_ID IN OUT DLQ GUARANTEE COMMIT_MS NUM_THREADS EXPECTED

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import java.nio.charset.StandardCharsets;
import java.nio.file.Files;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.atomic.AtomicLong;
import org.apache.kafka.common.serialization.Serdes;
import org.apache.kafka.streams.KafkaStreams;
import org.apache.kafka.streams.StreamsConfig;
import org.apache.kafka.streams.Topology;
import org.apache.kafka.streams.processor.api.Processor;
import org.apache.kafka.streams.processor.api.ProcessorContext;
import org.apache.kafka.streams.processor.api.Record;

public class StreamsEventLog {
    static final ObjectMapper JSON = new ObjectMapper();
    static final List<String> FIELDS = List.of("ip", "id", "lat", "lng", "user_agent",
        "age_bracket", "opted_into_marketing", "http_request", "http_response",
        "file_size_bytes", "event_datetime", "event_ts");

    /** Key and value of the EventLog of `value`; throws when it does not parse. */
    static byte[][] eventLog(byte[] value) throws Exception {
        JsonNode event = JSON.readTree(value);
        if (event == null || !event.isObject()) throw new IllegalArgumentException("not an object");
        StringBuilder out = new StringBuilder(value.length + 16).append('{');
        for (String field : FIELDS) {
            JsonNode v = event.get(field);
            if (v == null) throw new IllegalArgumentException("missing field " + field);
            if (out.length() > 1) out.append(", ");
            out.append('"').append(field).append("\": ");
            boolean empty = v.isTextual() && v.asText().isEmpty();
            out.append((field.equals("lat") || field.equals("lng")) && empty ? "-1" : v.toString());
        }
        JsonNode ts = event.get("event_ts");
        if (!ts.canConvertToLong()) throw new IllegalArgumentException("event_ts");
        String key = "{\"event_id\": " + event.get("id") + ", \"event_ts\": " + ts + "}";
        return new byte[][] {
            key.getBytes(StandardCharsets.UTF_8),
            out.append('}').toString().getBytes(StandardCharsets.UTF_8)
        };
    }

    public static void main(String[] args) throws Exception {
        long started = System.nanoTime();
        String bootstrap = args[0], application = args[1], in = args[2], out = args[3], dlq = args[4];
        String guarantee = args[5];
        String commitMs = args[6], threads = args[7];
        long expected = Long.parseLong(args[8]);
        AtomicLong processed = new AtomicLong();
        CountDownLatch done = new CountDownLatch(1);

        Topology topology = new Topology();
        topology.addSource("input", Serdes.ByteArray().deserializer(), Serdes.ByteArray().deserializer(), in);
        topology.addProcessor("eventlog", () -> new Processor<byte[], byte[], byte[], byte[]>() {
            ProcessorContext<byte[], byte[]> context;

            public void init(ProcessorContext<byte[], byte[]> context) {
                this.context = context;
            }

            public void process(Record<byte[], byte[]> record) {
                try {
                    byte[][] log = eventLog(record.value());
                    context.forward(record.withKey(log[0]).withValue(log[1]), "output");
                } catch (Exception bad) {
                    context.forward(record, "dead-letters");
                }
                if (processed.incrementAndGet() == expected) done.countDown();
            }
        }, "input");
        topology.addSink("output", out, Serdes.ByteArray().serializer(), Serdes.ByteArray().serializer(), "eventlog");
        topology.addSink("dead-letters", dlq, Serdes.ByteArray().serializer(), Serdes.ByteArray().serializer(), "eventlog");

        Properties p = new Properties();
        p.put(StreamsConfig.BOOTSTRAP_SERVERS_CONFIG, bootstrap);
        p.put(StreamsConfig.APPLICATION_ID_CONFIG, application);
        p.put(StreamsConfig.PROCESSING_GUARANTEE_CONFIG, guarantee);
        p.put(StreamsConfig.COMMIT_INTERVAL_MS_CONFIG, commitMs);
        p.put(StreamsConfig.NUM_STREAM_THREADS_CONFIG, threads);
        p.put(StreamsConfig.STATE_DIR_CONFIG, Files.createTempDirectory("streams-bench").toString());
        p.put(StreamsConfig.producerPrefix("linger.ms"), "5");
        p.put(StreamsConfig.producerPrefix("batch.size"), "1000000");
        p.put(StreamsConfig.consumerPrefix("fetch.max.wait.ms"), "50");
        p.put(StreamsConfig.consumerPrefix("auto.offset.reset"), "earliest");

        KafkaStreams streams = new KafkaStreams(topology, p);
        streams.setUncaughtExceptionHandler(e -> {
            e.printStackTrace();
            done.countDown();
            return org.apache.kafka.streams.errors.StreamsUncaughtExceptionHandler.StreamThreadExceptionResponse.SHUTDOWN_CLIENT;
        });
        streams.start();
        done.await();
        long processing = System.nanoTime();
        streams.close(Duration.ofSeconds(60));
        long closed = System.nanoTime();
        System.err.printf("StreamsEventLog: %d records processed in %.2f s, closed (committed) after %.2f s%n",
            processed.get(), (processing - started) / 1e9, (closed - started) / 1e9);
        if (processed.get() < expected) System.exit(1);
    }
}
