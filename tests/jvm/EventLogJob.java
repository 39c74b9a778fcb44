// A JVM job for the tests: the article's transform (website-visit → EventLog →
// website-out, keyed by {"event_id", "event_ts"}; empty lat/lng become -1), written as
// a hand-written Kafka consumer and producer would write it, at least once, and like
// Flink's KafkaSink and Beam's WriteToKafka it forwards no input header. Records that do
// not parse go to the dead-letter topic with their original key and value.
//
// Run from Kafka's own jars (Java 11+ launches a single source file):
//   java -cp "$KAFKA_HOME/libs/*" tests/jvm/EventLogJob.java BOOTSTRAP GROUP IN OUT DLQ [COMMIT_MS]

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.errors.WakeupException;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;

public class EventLogJob {
    static final ObjectMapper JSON = new ObjectMapper();
    static final List<String> FIELDS = List.of("ip", "id", "lat", "lng", "user_agent",
        "age_bracket", "opted_into_marketing", "http_request", "http_response",
        "file_size_bytes", "event_datetime", "event_ts");

    /** The EventLog of a record's value, as the original's dataclass writes it. */
    static ObjectNode eventLog(byte[] value) throws Exception {
        JsonNode event = JSON.readTree(value);
        if (event == null || !event.isObject()) throw new IllegalArgumentException("not an object");
        ObjectNode out = JSON.createObjectNode();
        for (String field : FIELDS) {
            JsonNode v = event.get(field);
            if (v == null) throw new IllegalArgumentException("missing field " + field);
            if ((field.equals("lat") || field.equals("lng")) && v.isTextual() && v.asText().isEmpty()) {
                out.put(field, -1.0);
            } else {
                out.set(field, v);
            }
        }
        if (!out.get("event_ts").canConvertToLong()) throw new IllegalArgumentException("event_ts");
        return out;
    }

    public static void main(String[] args) throws Exception {
        String bootstrap = args[0], group = args[1], in = args[2], out = args[3], dlq = args[4];
        long commitMs = args.length > 5 ? Long.parseLong(args[5]) : 1000;
        Properties c = new Properties();
        c.put("bootstrap.servers", bootstrap);
        c.put("group.id", group);
        c.put("enable.auto.commit", "false");
        c.put("auto.offset.reset", "earliest");
        c.put("key.deserializer", ByteArrayDeserializer.class.getName());
        c.put("value.deserializer", ByteArrayDeserializer.class.getName());
        Properties p = new Properties();
        p.put("bootstrap.servers", bootstrap);
        p.put("linger.ms", "5");
        p.put("key.serializer", ByteArraySerializer.class.getName());
        p.put("value.serializer", ByteArraySerializer.class.getName());
        KafkaConsumer<byte[], byte[]> consumer = new KafkaConsumer<>(c);
        KafkaProducer<byte[], byte[]> producer = new KafkaProducer<>(p);
        Thread main = Thread.currentThread();
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            consumer.wakeup();
            try { main.join(10_000); } catch (InterruptedException e) { }
        }));
        consumer.subscribe(List.of(in));
        long lastCommit = System.currentTimeMillis();
        try {
            while (true) {
                for (ConsumerRecord<byte[], byte[]> r : consumer.poll(Duration.ofMillis(100))) {
                    ProducerRecord<byte[], byte[]> sent;
                    try {
                        ObjectNode log = eventLog(r.value());
                        ObjectNode key = JSON.createObjectNode();
                        key.set("event_id", log.get("id"));
                        key.set("event_ts", log.get("event_ts"));
                        // No headers: a new record of key and value only.
                        sent = new ProducerRecord<>(out, JSON.writeValueAsBytes(key), JSON.writeValueAsBytes(log));
                    } catch (Exception e) {
                        sent = new ProducerRecord<>(dlq, r.key(), r.value());
                    }
                    producer.send(sent);
                }
                // At least once: positions are committed only after what was read is acknowledged.
                if (System.currentTimeMillis() - lastCommit >= commitMs) {
                    producer.flush();
                    consumer.commitSync();
                    lastCommit = System.currentTimeMillis();
                }
            }
        } catch (WakeupException stopping) {
            producer.flush();
            consumer.commitSync();
        } finally {
            producer.close();
            consumer.close();
        }
        System.err.println("EventLogJob: stopped");
    }
}
