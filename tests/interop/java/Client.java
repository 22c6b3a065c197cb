// A Java client of preimage, built from stubs that protoc and the grpc-java plugin
// generate from protos/ (tests/interop/compiled.py does it at test time; nothing
// generated is committed).
//
//   java Client HOST:PORT CA.pem TOKEN MODEL.onnx BIG_MODEL.onnx
//
// Over TLS (the server's certificate signed by CA.pem) with a bearer token, it
// registers both models through the client-streaming RegisterModel (BIG_MODEL is
// over gRPC's 4 MiB message size), predicts a batch with the raw float32 matrix
// encoding, reads an Invert of a few thousand patterns, cancels a second Invert
// midway and waits for the server to free its slot, and reads the
// google.rpc.BadRequest of a bad request. Every step prints one JSON line on
// stdout for the Python test to check; a failed check exits 1 with the reason on
// stderr.

import com.google.protobuf.ByteString;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import com.google.rpc.RetryInfo;
import dev.preimage.v1.GetModelRequest;
import dev.preimage.v1.InferenceServiceGrpc;
import dev.preimage.v1.InputFeature;
import dev.preimage.v1.InvertRequest;
import dev.preimage.v1.InvertResponse;
import dev.preimage.v1.InvertStatus;
import dev.preimage.v1.InvertSummary;
import dev.preimage.v1.ListModelsRequest;
import dev.preimage.v1.Matrix;
import dev.preimage.v1.ModelInfo;
import dev.preimage.v1.PredictRequest;
import dev.preimage.v1.PredictResponse;
import dev.preimage.v1.RegisterModelHeader;
import dev.preimage.v1.RegisterModelRequest;
import dev.preimage.v1.RegisterModelResponse;
import dev.preimage.v1.RegistryServiceGrpc;
import dev.preimage.v1.Target;
import io.grpc.CallCredentials;
import io.grpc.ChannelCredentials;
import io.grpc.Context;
import io.grpc.Grpc;
import io.grpc.ManagedChannel;
import io.grpc.Metadata;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import io.grpc.protobuf.StatusProto;
import io.grpc.stub.StreamObserver;
import java.io.File;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.FloatBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.MessageDigest;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.HexFormat;
import java.util.Iterator;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeUnit;

public final class Client {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  /** Sends {@code authorization: Bearer <token>} with every call. */
  static final class Bearer extends CallCredentials {
    private final String token;

    Bearer(String token) {
      this.token = token;
    }

    @Override
    public void applyRequestMetadata(RequestInfo info, Executor executor, MetadataApplier applier) {
      Metadata headers = new Metadata();
      headers.put(AUTHORIZATION, "Bearer " + token);
      applier.apply(headers);
    }

    @Override
    public void thisUsesUnstableApi() {}
  }

  static ManagedChannel connect(String address, String caFile) throws IOException {
    ChannelCredentials tls = TlsChannelCredentials.newBuilder().trustManager(new File(caFile)).build();
    return Grpc.newChannelBuilder(address, tls).maxInboundMessageSize(64 << 20).build();
  }

  /** Rows as Matrix.raw: little-endian float32, row-major. */
  static Matrix rawMatrix(float[][] rows) {
    int cols = rows[0].length;
    ByteBuffer raw = ByteBuffer.allocate(4 * rows.length * cols).order(ByteOrder.LITTLE_ENDIAN);
    for (float[] row : rows) {
      for (float v : row) {
        raw.putFloat(v);
      }
    }
    raw.flip();
    return Matrix.newBuilder().setRows(rows.length).setCols(cols).setRaw(ByteString.copyFrom(raw)).build();
  }

  /** A Matrix in either encoding, as rows. */
  static float[][] unpack(Matrix m) {
    float[][] rows = new float[m.getRows()][m.getCols()];
    FloatBuffer raw = m.getRaw().asReadOnlyByteBuffer().order(ByteOrder.LITTLE_ENDIAN).asFloatBuffer();
    for (int r = 0; r < m.getRows(); r++) {
      for (int c = 0; c < m.getCols(); c++) {
        int i = r * m.getCols() + c;
        rows[r][c] = m.getRaw().isEmpty() ? m.getValues(i) : raw.get(i);
      }
    }
    return rows;
  }

  /** RegisterModel is client-streaming: the header first, then the bytes in chunks. */
  static ModelInfo register(RegistryServiceGrpc.RegistryServiceStub registry, String name, byte[] model, int chunk)
      throws Exception {
    CompletableFuture<ModelInfo> done = new CompletableFuture<>();
    StreamObserver<RegisterModelRequest> upload =
        registry.registerModel(
            new StreamObserver<RegisterModelResponse>() {
              @Override
              public void onNext(RegisterModelResponse response) {
                done.complete(response.getModel());
              }

              @Override
              public void onError(Throwable t) {
                done.completeExceptionally(t);
              }

              @Override
              public void onCompleted() {}
            });
    String sha256 = HexFormat.of().formatHex(MessageDigest.getInstance("SHA-256").digest(model));
    upload.onNext(
        RegisterModelRequest.newBuilder()
            .setHeader(RegisterModelHeader.newBuilder().setName(name).setSizeBytes(model.length).setSha256(sha256))
            .build());
    for (int start = 0; start < model.length; start += chunk) {
      ByteString piece = ByteString.copyFrom(model, start, Math.min(chunk, model.length - start));
      upload.onNext(RegisterModelRequest.newBuilder().setChunk(piece).build());
    }
    upload.onCompleted();
    try {
      return done.get();
    } catch (ExecutionException e) {
      throw (Exception) e.getCause();
    }
  }

  /** The google.rpc.BadRequest in the status details (grpc-status-details-bin), if any. */
  static BadRequest badRequest(StatusRuntimeException e) throws InvalidProtocolBufferException {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    if (status != null) {
      for (com.google.protobuf.Any detail : status.getDetailsList()) {
        if (detail.is(BadRequest.class)) {
          return detail.unpack(BadRequest.class);
        }
      }
    }
    return BadRequest.getDefaultInstance();
  }

  /** The google.rpc.RetryInfo hint in seconds, 0 without one. */
  static double retryDelay(StatusRuntimeException e) throws InvalidProtocolBufferException {
    com.google.rpc.Status status = StatusProto.fromThrowable(e);
    if (status != null) {
      for (com.google.protobuf.Any detail : status.getDetailsList()) {
        if (detail.is(RetryInfo.class)) {
          RetryInfo info = detail.unpack(RetryInfo.class);
          return info.getRetryDelay().getSeconds() + info.getRetryDelay().getNanos() / 1e9;
        }
      }
    }
    return 0;
  }

  record Patterns(List<float[]> inputs, List<float[]> outputs, List<float[]> errors, InvertSummary summary, int messages) {}

  /** Reads an Invert stream to its end: every PatternBatch, then the summary. */
  static Patterns invertAll(InferenceServiceGrpc.InferenceServiceBlockingStub inference, InvertRequest request) {
    List<float[]> inputs = new ArrayList<>();
    List<float[]> outputs = new ArrayList<>();
    List<float[]> errors = new ArrayList<>();
    InvertSummary summary = null;
    int messages = 0;
    Iterator<InvertResponse> responses = inference.invert(request);
    while (responses.hasNext()) {
      InvertResponse response = responses.next();
      messages++;
      switch (response.getEventCase()) {
        case PATTERNS -> {
          inputs.addAll(List.of(unpack(response.getPatterns().getInputs())));
          outputs.addAll(List.of(unpack(response.getPatterns().getOutputs())));
          errors.addAll(List.of(unpack(response.getPatterns().getErrors())));
        }
        case SUMMARY -> summary = response.getSummary();
        default -> {}
      }
    }
    return new Patterns(inputs, outputs, errors, summary, messages);
  }

  static void check(boolean ok, String what) {
    if (!ok) {
      System.err.println("check failed: " + what);
      System.exit(1);
    }
  }

  static String json(Object value) {
    if (value == null) {
      return "null";
    } else if (value instanceof String s) {
      StringBuilder out = new StringBuilder("\"");
      for (char ch : s.toCharArray()) {
        if (ch == '"' || ch == '\\') {
          out.append('\\').append(ch);
        } else if (ch < 0x20) {
          out.append(String.format("\\u%04x", (int) ch));
        } else {
          out.append(ch);
        }
      }
      return out.append('"').toString();
    } else if (value instanceof Number || value instanceof Boolean) {
      return value.toString();
    } else if (value instanceof float[] row) {
      List<Object> items = new ArrayList<>();
      for (float v : row) {
        items.add(v);
      }
      return json(items);
    } else if (value instanceof float[][] rows) {
      return json(List.of(rows));
    } else if (value instanceof List<?> items) {
      List<String> parts = new ArrayList<>();
      for (Object item : items) {
        parts.add(json(item));
      }
      return "[" + String.join(",", parts) + "]";
    } else if (value instanceof Map<?, ?> fields) {
      List<String> parts = new ArrayList<>();
      fields.forEach((k, v) -> parts.add(json(k.toString()) + ":" + json(v)));
      return "{" + String.join(",", parts) + "}";
    }
    throw new IllegalArgumentException("no JSON for " + value.getClass());
  }

  static void emit(String step, Object... keyValues) {
    Map<String, Object> fields = new LinkedHashMap<>();
    fields.put("step", step);
    for (int i = 0; i < keyValues.length; i += 2) {
      fields.put((String) keyValues[i], keyValues[i + 1]);
    }
    System.out.println(json(fields));
  }

  public static void main(String[] args) throws Exception {
    if (args.length != 5) {
      System.err.println("usage: java Client HOST:PORT CA.pem TOKEN MODEL.onnx BIG_MODEL.onnx");
      System.exit(2);
    }
    String address = args[0];
    ManagedChannel channel = connect(address, args[1]);
    Bearer token = new Bearer(args[2]);
    RegistryServiceGrpc.RegistryServiceStub registry =
        RegistryServiceGrpc.newStub(channel).withCallCredentials(token).withDeadlineAfter(120, TimeUnit.SECONDS);
    RegistryServiceGrpc.RegistryServiceBlockingStub registryBlocking =
        RegistryServiceGrpc.newBlockingStub(channel).withCallCredentials(token).withDeadlineAfter(120, TimeUnit.SECONDS);
    InferenceServiceGrpc.InferenceServiceBlockingStub inference =
        InferenceServiceGrpc.newBlockingStub(channel).withCallCredentials(token).withDeadlineAfter(120, TimeUnit.SECONDS);

    // Without the token the server refuses before doing anything.
    try {
      RegistryServiceGrpc.newBlockingStub(channel).listModels(ListModelsRequest.getDefaultInstance());
      emit("no_token", "code", "OK");
    } catch (StatusRuntimeException e) {
      emit("no_token", "code", e.getStatus().getCode().name());
    }

    byte[] model = Files.readAllBytes(Path.of(args[3]));
    ModelInfo info = register(registry, "java-example", model, 64 << 10);
    String ref = info.getName() + ":" + info.getVersion();
    emit("register", "ref", ref, "size_bytes", info.getSizeBytes(), "sha256", info.getSha256());

    byte[] big = Files.readAllBytes(Path.of(args[4]));
    check(big.length > 4 << 20, "the big model is over 4 MiB");
    ModelInfo bigInfo = register(registry, "java-big", big, 1 << 20);
    String bigRef = bigInfo.getName() + ":" + bigInfo.getVersion();
    float[][] bigX = new float[1][bigInfo.getInputWidth()];
    Arrays.fill(bigX[0], 0.5f);
    PredictResponse bigY =
        inference.predict(PredictRequest.newBuilder().setModelRef(bigRef).setInputs(rawMatrix(bigX)).build());
    emit("register_big", "ref", bigRef, "size_bytes", bigInfo.getSizeBytes(), "inputs", bigX,
        "outputs", unpack(bigY.getOutputs()));

    // The schema's bounds, to check every pattern against.
    List<InputFeature> features =
        registryBlocking.getModel(GetModelRequest.newBuilder().setModelRef(ref).build()).getModel().getSchema().getInputsList();
    int width = features.size();
    for (InputFeature feature : features) {
      check(feature.hasMin() && feature.hasMax(), feature.getName() + " is bounded");
    }

    // A batch through Predict, raw float32 both ways.
    float[][] batch = new float[32][width];
    for (int r = 0; r < batch.length; r++) {
      for (int c = 0; c < width; c++) {
        batch[r][c] = ((r * width + c) % 17) / 16f;
      }
    }
    PredictResponse predicted =
        inference.predict(
            PredictRequest.newBuilder().setModelRef(ref).setInputs(rawMatrix(batch)).setRawOutputs(true).build());
    check(predicted.getOutputs().getRaw().size() == 4 * batch.length && predicted.getOutputs().getValuesCount() == 0,
        "Predict answered raw");
    emit("predict", "inputs", batch, "outputs", unpack(predicted.getOutputs()));

    // An Invert of a few thousand patterns, every one checked here and again in Python.
    double target = 7.0;
    double tolerance = 1e-3;
    int n = 2000;
    Patterns found =
        invertAll(
            inference,
            InvertRequest.newBuilder()
                .setModelRef(ref)
                .addTargets(Target.newBuilder().setValue(target))
                .setCount(n)
                .setTolerance(tolerance)
                .setSeed(11)
                .setBatchSize(256)
                .setRawOutputs(true)
                .build());
    check(found.summary() != null, "the stream ends with a summary");
    check(found.summary().getStatus() == InvertStatus.INVERT_STATUS_COMPLETE, "status " + found.summary().getStatus());
    check(found.summary().getReturned() == n && found.inputs().size() == n, "returned " + found.inputs().size() + " of " + n);
    check(found.messages() > 2, "patterns arrive in several messages");
    for (int i = 0; i < n; i++) {
      float[] x = found.inputs().get(i);
      check(x.length == width, "pattern " + i + " has " + width + " columns");
      check(found.errors().get(i)[0] <= tolerance, "pattern " + i + " error " + found.errors().get(i)[0]);
      check(Math.abs(found.outputs().get(i)[0] - target) <= tolerance + 1e-6, "pattern " + i + " output");
      for (int c = 0; c < width; c++) {
        InputFeature f = features.get(c);
        check(x[c] >= f.getMin() && x[c] <= f.getMax(), "pattern " + i + " column " + c + " = " + x[c] + " inside bounds");
      }
    }
    emit("invert", "inputs", found.inputs(), "outputs", found.outputs(), "errors", found.errors(),
        "messages", found.messages(), "status", found.summary().getStatus().name(), "returned", found.summary().getReturned());

    // A long Invert, cancelled after its first message. The server under test
    // allows one Invert at a time: while the stream is open a second one is
    // refused, and once the cancellation reaches the server its slot is free.
    InvertRequest endless =
        InvertRequest.newBuilder().setModelRef(ref).addTargets(Target.newBuilder().setValue(target))
            .setCount(2_000_000).setBatchSize(16).build();
    InvertRequest small =
        InvertRequest.newBuilder().setModelRef(ref).addTargets(Target.newBuilder().setValue(target))
            .setCount(4).setSeed(5).build();
    Context.CancellableContext streamContext = Context.current().withCancellation();
    Iterator<InvertResponse> stream = streamContext.call(() -> inference.invert(endless));
    check(stream.next().hasPatterns(), "the long stream starts with patterns");
    String busy = "OK";
    double retryAfter = 0;
    try {
      invertAll(inference, small);
    } catch (StatusRuntimeException e) {
      busy = e.getStatus().getCode().name();
      retryAfter = retryDelay(e);
    }
    streamContext.cancel(null);
    String cancelled = "OK";
    try {
      while (stream.hasNext()) { // messages already in flight before the cancellation
        stream.next();
      }
    } catch (StatusRuntimeException e) {
      cancelled = e.getStatus().getCode().name();
    }
    int attempts = 0;
    Patterns after = null;
    while (after == null) {
      attempts++;
      try {
        after = invertAll(inference, small);
      } catch (StatusRuntimeException e) {
        check(e.getStatus().getCode() == Status.Code.RESOURCE_EXHAUSTED && attempts < 100,
            "Invert after the cancellation: " + e.getStatus());
        Thread.sleep(50);
      }
    }
    emit("cancel", "code", cancelled, "while_open", busy, "retry_after_s", retryAfter, "attempts_after", attempts,
        "after_status", after.summary().getStatus().name(), "after_returned", after.summary().getReturned());

    // A bad request: raw bytes that do not fill rows x cols. The status carries
    // a google.rpc.BadRequest naming the field.
    try {
      inference.predict(
          PredictRequest.newBuilder()
              .setModelRef(ref)
              .setInputs(Matrix.newBuilder().setRows(2).setCols(width).setRaw(ByteString.copyFrom(new byte[7])))
              .build());
      emit("bad_request", "code", "OK");
    } catch (StatusRuntimeException e) {
      BadRequest details = badRequest(e);
      BadRequest.FieldViolation violation =
          details.getFieldViolationsCount() > 0 ? details.getFieldViolations(0) : BadRequest.FieldViolation.getDefaultInstance();
      emit("bad_request", "code", e.getStatus().getCode().name(), "field", violation.getField(),
          "description", violation.getDescription());
    }
    channel.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
  }
}
