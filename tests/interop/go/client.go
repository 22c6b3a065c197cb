// A Go client of preimage, built from stubs that protoc generates from protos/
// (tests/interop/compiled.py does it at test time; nothing generated is committed).
//
//	client HOST:PORT CA.pem TOKEN MODEL.onnx BIG_MODEL.onnx
//
// Over TLS (the server's certificate signed by CA.pem) with a bearer token, it
// registers both models through the client-streaming RegisterModel (BIG_MODEL
// is over gRPC's 4 MiB message size), predicts a batch with the raw float32
// matrix encoding, reads an Invert of a few thousand patterns, cancels a
// second Invert midway and waits for the server to free its slot, and reads
// the google.rpc.BadRequest of a bad request. Every step prints one JSON line
// on stdout for the Python test to check; a failed check exits 1 with the
// reason on stderr.
package main

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	preimagev1 "github.com/preimage-dev/preimage/gen/go/preimage/v1"
)

// bearer sends `authorization: Bearer <token>` with every call, over TLS only.
type bearer string

func (t bearer) GetRequestMetadata(ctx context.Context, uri ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(t)}, nil
}

func (t bearer) RequireTransportSecurity() bool { return true }

func dial(address, caFile, token string) (*grpc.ClientConn, error) {
	tlsCredentials, err := credentials.NewClientTLSFromFile(caFile, "")
	if err != nil {
		return nil, err
	}
	options := []grpc.DialOption{
		grpc.WithTransportCredentials(tlsCredentials),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64 << 20)),
	}
	if token != "" {
		options = append(options, grpc.WithPerRPCCredentials(bearer(token)))
	}
	return grpc.Dial(address, options...)
}

// rawMatrix packs rows as Matrix.raw: little-endian float32, row-major.
func rawMatrix(rows [][]float32) *preimagev1.Matrix {
	cols := len(rows[0])
	raw := make([]byte, 0, 4*len(rows)*cols)
	for _, row := range rows {
		for _, v := range row {
			raw = binary.LittleEndian.AppendUint32(raw, math.Float32bits(v))
		}
	}
	return &preimagev1.Matrix{Rows: uint32(len(rows)), Cols: uint32(cols), Raw: raw}
}

// unpack reads a Matrix in either encoding into rows.
func unpack(m *preimagev1.Matrix) [][]float32 {
	rows := make([][]float32, m.Rows)
	for r := range rows {
		rows[r] = make([]float32, m.Cols)
		for c := range rows[r] {
			i := r*int(m.Cols) + c
			if len(m.Raw) > 0 {
				rows[r][c] = math.Float32frombits(binary.LittleEndian.Uint32(m.Raw[4*i:]))
			} else {
				rows[r][c] = m.Values[i]
			}
		}
	}
	return rows
}

// register streams the header, then the model's bytes in chunks.
func register(ctx context.Context, registry preimagev1.RegistryServiceClient, name string, model []byte, chunk int) (*preimagev1.ModelInfo, error) {
	stream, err := registry.RegisterModel(ctx)
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256(model)
	header := &preimagev1.RegisterModelHeader{Name: name, SizeBytes: uint64(len(model)), Sha256: hex.EncodeToString(sum[:])}
	if err := stream.Send(&preimagev1.RegisterModelRequest{Payload: &preimagev1.RegisterModelRequest_Header{Header: header}}); err != nil {
		return nil, err
	}
	for start := 0; start < len(model); start += chunk {
		end := start + chunk
		if end > len(model) {
			end = len(model)
		}
		if err := stream.Send(&preimagev1.RegisterModelRequest{Payload: &preimagev1.RegisterModelRequest_Chunk{Chunk: model[start:end]}}); err != nil {
			return nil, err
		}
	}
	response, err := stream.CloseAndRecv()
	if err != nil {
		return nil, err
	}
	return response.Model, nil
}

// badRequestField is the first field violation of a google.rpc.BadRequest in
// the error's details (the grpc-status-details-bin trailer).
func badRequestField(err error) (field, description string) {
	for _, detail := range status.Convert(err).Details() {
		if badRequest, ok := detail.(*errdetails.BadRequest); ok && len(badRequest.FieldViolations) > 0 {
			return badRequest.FieldViolations[0].Field, badRequest.FieldViolations[0].Description
		}
	}
	return "", ""
}

// retryDelay is the google.rpc.RetryInfo hint of the error, in seconds (0 without one).
func retryDelay(err error) float64 {
	for _, detail := range status.Convert(err).Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok {
			return float64(info.RetryDelay.Seconds) + float64(info.RetryDelay.Nanos)/1e9
		}
	}
	return 0
}

type patterns struct {
	Inputs, Outputs, Errors [][]float32
	Summary                 *preimagev1.InvertSummary
	Messages                int
}

// invertAll reads an Invert stream to its end: every PatternBatch, then the summary.
func invertAll(ctx context.Context, inference preimagev1.InferenceServiceClient, request *preimagev1.InvertRequest) (*patterns, error) {
	stream, err := inference.Invert(ctx, request)
	if err != nil {
		return nil, err
	}
	found := &patterns{}
	for {
		response, err := stream.Recv()
		if err == io.EOF {
			return found, nil
		}
		if err != nil {
			return nil, err
		}
		found.Messages++
		switch event := response.Event.(type) {
		case *preimagev1.InvertResponse_Patterns:
			found.Inputs = append(found.Inputs, unpack(event.Patterns.Inputs)...)
			found.Outputs = append(found.Outputs, unpack(event.Patterns.Outputs)...)
			found.Errors = append(found.Errors, unpack(event.Patterns.Errors)...)
		case *preimagev1.InvertResponse_Summary:
			found.Summary = event.Summary
		}
	}
}

func emit(step string, fields map[string]any) {
	fields["step"] = step
	line, err := json.Marshal(fields)
	if err != nil {
		fail("%s: %v", step, err)
	}
	fmt.Println(string(line))
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "check failed: "+format+"\n", args...)
	os.Exit(1)
}

func check(ok bool, format string, args ...any) {
	if !ok {
		fail(format, args...)
	}
}

func must[T any](value T, err error) T {
	if err != nil {
		fail("%s: %s", status.Code(err), status.Convert(err).Message())
	}
	return value
}

func main() {
	if len(os.Args) != 6 {
		fmt.Fprintln(os.Stderr, "usage: client HOST:PORT CA.pem TOKEN MODEL.onnx BIG_MODEL.onnx")
		os.Exit(2)
	}
	address, caFile, token, modelPath, bigPath := os.Args[1], os.Args[2], os.Args[3], os.Args[4], os.Args[5]
	conn := must(dial(address, caFile, token))
	defer conn.Close()
	registry := preimagev1.NewRegistryServiceClient(conn)
	inference := preimagev1.NewInferenceServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 120*time.Second)
	defer cancel()

	// Without the token the server refuses before doing anything.
	anonymous := must(dial(address, caFile, ""))
	_, err := preimagev1.NewRegistryServiceClient(anonymous).ListModels(ctx, &preimagev1.ListModelsRequest{})
	anonymous.Close()
	emit("no_token", map[string]any{"code": status.Code(err).String()})

	model := must(os.ReadFile(modelPath))
	info := must(register(ctx, registry, "go-example", model, 64<<10))
	ref := fmt.Sprintf("%s:%d", info.Name, info.Version)
	emit("register", map[string]any{"ref": ref, "size_bytes": info.SizeBytes, "sha256": info.Sha256})

	big := must(os.ReadFile(bigPath))
	check(len(big) > 4<<20, "the big model is over 4 MiB")
	bigInfo := must(register(ctx, registry, "go-big", big, 1<<20))
	bigRef := fmt.Sprintf("%s:%d", bigInfo.Name, bigInfo.Version)
	bigX := [][]float32{make([]float32, bigInfo.InputWidth)}
	for c := range bigX[0] {
		bigX[0][c] = 0.5
	}
	bigY := must(inference.Predict(ctx, &preimagev1.PredictRequest{ModelRef: bigRef, Inputs: rawMatrix(bigX)}))
	emit("register_big", map[string]any{"ref": bigRef, "size_bytes": bigInfo.SizeBytes, "inputs": bigX, "outputs": unpack(bigY.Outputs)})

	// The schema's bounds, to check every pattern against.
	schema := must(registry.GetModel(ctx, &preimagev1.GetModelRequest{ModelRef: ref})).Model.Schema
	width := len(schema.Inputs)
	lower, upper := make([]float64, width), make([]float64, width)
	for c, feature := range schema.Inputs {
		check(feature.Min != nil && feature.Max != nil, "feature %d is bounded", c)
		lower[c], upper[c] = *feature.Min, *feature.Max
	}

	// A batch through Predict, raw float32 both ways.
	batch := make([][]float32, 32)
	for r := range batch {
		batch[r] = make([]float32, width)
		for c := range batch[r] {
			batch[r][c] = float32((r*width+c)%17) / 16
		}
	}
	predicted := must(inference.Predict(ctx, &preimagev1.PredictRequest{ModelRef: ref, Inputs: rawMatrix(batch), RawOutputs: true}))
	check(len(predicted.Outputs.Raw) == 4*len(batch) && len(predicted.Outputs.Values) == 0, "Predict answered raw")
	emit("predict", map[string]any{"inputs": batch, "outputs": unpack(predicted.Outputs)})

	// An Invert of a few thousand patterns, every one checked here and again in Python.
	const target, tolerance, n = 7.0, 1e-3, 2000
	found := must(invertAll(ctx, inference, &preimagev1.InvertRequest{
		ModelRef:   ref,
		Targets:    []*preimagev1.Target{{Kind: &preimagev1.Target_Value{Value: target}}},
		Count:      n,
		Tolerance:  proto.Float64(tolerance),
		Seed:       proto.Uint64(11),
		BatchSize:  256,
		RawOutputs: true,
	}))
	check(found.Summary != nil, "the stream ends with a summary")
	check(found.Summary.Status == preimagev1.InvertStatus_INVERT_STATUS_COMPLETE, "status %s", found.Summary.Status)
	check(found.Summary.Returned == n && len(found.Inputs) == n, "returned %d of %d", len(found.Inputs), n)
	check(found.Messages > 2, "patterns arrive in several messages")
	for i, x := range found.Inputs {
		check(len(x) == width, "pattern %d has %d columns", i, width)
		check(float64(found.Errors[i][0]) <= tolerance, "pattern %d error %g", i, found.Errors[i][0])
		check(math.Abs(float64(found.Outputs[i][0])-target) <= tolerance+1e-6, "pattern %d output %g", i, found.Outputs[i][0])
		for c, v := range x {
			check(float64(v) >= lower[c] && float64(v) <= upper[c], "pattern %d column %d = %g inside bounds", i, c, v)
		}
	}
	emit("invert", map[string]any{
		"inputs": found.Inputs, "outputs": found.Outputs, "errors": found.Errors, "messages": found.Messages,
		"status": found.Summary.Status.String(), "returned": found.Summary.Returned,
	})

	// A long Invert, cancelled after its first message. The server under test
	// allows one Invert at a time: while the stream is open a second one is
	// refused, and once the cancellation reaches the server its slot is free.
	endless := &preimagev1.InvertRequest{
		ModelRef: ref, Targets: []*preimagev1.Target{{Kind: &preimagev1.Target_Value{Value: target}}},
		Count: 2_000_000, BatchSize: 16,
	}
	small := &preimagev1.InvertRequest{
		ModelRef: ref, Targets: []*preimagev1.Target{{Kind: &preimagev1.Target_Value{Value: target}}},
		Count: 4, Seed: proto.Uint64(5),
	}
	streamCtx, cancelStream := context.WithCancel(ctx)
	stream := must(inference.Invert(streamCtx, endless))
	first := must(stream.Recv())
	check(first.GetPatterns() != nil, "the long stream starts with patterns")
	_, err = invertAll(ctx, inference, small)
	busy, retryAfter := status.Code(err), retryDelay(err)
	cancelStream()
	_, err = stream.Recv()
	for err == nil { // messages already in flight before the cancellation
		_, err = stream.Recv()
	}
	cancelled := status.Code(err)
	attempts := 0
	var after *patterns
	for attempts < 100 {
		attempts++
		after, err = invertAll(ctx, inference, small)
		if status.Code(err) != codes.ResourceExhausted {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	check(err == nil, "Invert after the cancellation: %v", err)
	emit("cancel", map[string]any{
		"code": cancelled.String(), "while_open": busy.String(), "retry_after_s": retryAfter,
		"attempts_after": attempts, "after_status": after.Summary.Status.String(), "after_returned": after.Summary.Returned,
	})

	// A bad request: raw bytes that do not fill rows x cols. The status carries
	// a google.rpc.BadRequest naming the field.
	_, err = inference.Predict(ctx, &preimagev1.PredictRequest{
		ModelRef: ref, Inputs: &preimagev1.Matrix{Rows: 2, Cols: uint32(width), Raw: make([]byte, 7)},
	})
	field, description := badRequestField(err)
	emit("bad_request", map[string]any{"code": status.Code(err).String(), "field": field, "description": description})
}
